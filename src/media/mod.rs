//! Media: S3-compatible object storage for encrypted blobs, signed by hand
//! with `ring` (no AWS SDK), the embedded store that a single machine uses
//! instead of an external S3, and the service that ties media to keys and
//! messages.
//!
//! # Layout
//! - `sigv4`: AWS Signature V4 as pure functions (time passed in):
//!   presigned URLs, header-signed requests, and the verification of both.
//! - `blobstore`: the embedded S3-compatible endpoint on local disk, as
//!   actix-web handlers that accept exactly those signatures.
//! - `service`: upload URLs and data keys, claiming an upload for a
//!   message, GET grants, shredding and the blob sweeper (which also
//!   deletes orphaned blobs), and the embedded store's upload gate.
//! - `kinds`: the kinds of media (photo, video, voice note, document)
//!   and the size limit of each.
//! - `quota`: per-user bounds on pending uploads and the rate of upload
//!   URLs.
//! - `fuzzing` (tests only): the bodies of the `sigv4` and `blobstore`
//!   fuzz targets in `fuzz/`, and their stable smoke tests.

// The signer and the embedded store are complete S3 surfaces (accessors,
// alternative mountings) of which the server uses a part; their own tests
// use the rest.
#[allow(dead_code)]
pub mod blobstore;
#[cfg(test)]
mod fuzzing;
pub mod kinds;
pub mod quota;
pub mod service;
#[allow(dead_code)]
pub mod sigv4;
