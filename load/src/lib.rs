//! Load generator and Rust client library for Ephemera.
//!
//! The library half is what the server's integration tests and the load
//! generator (`src/main.rs`) use to talk to a running server over its public
//! HTTP API and its WebSocket.
//!
//! # Layout
//!
//! * [`client`]: async client for the HTTP API ([`client::Http`]) and the
//!   socket ([`client::Socket`]), with typed answers and errors that carry
//!   the HTTP status and error code but never content or tokens.
//! * [`crypto`]: AES-256-GCM sealing of media under a server-minted data key.

pub mod client;
pub mod crypto;
