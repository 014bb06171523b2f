//! A short run of the load generator against the real server: a few
//! seconds at a modest open-loop rate, checking correctness (every acked
//! message reached every device exactly once), not speed.

#[allow(unused_imports)]
mod common;

use common::Server;
use ephemera_load::config::LoadConfig;
use ephemera_load::run;
use ephemera_load::schedule::{RateProfile, Shares};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_open_loop_run_loses_and_duplicates_nothing() {
    // Limits high enough that the run measures delivery, not throttling.
    let server = Server::start(&[
        "--send-rate-per-second",
        "100000",
        "--send-burst",
        "100000",
        "--frame-rate-per-second",
        "100000",
        "--frame-burst",
        "100000",
        // Every user registers and logs in from this one address.
        "--login-address-rate-per-second",
        "100000",
        "--login-address-burst",
        "100000",
    ])
    .await;

    let mut cfg = LoadConfig::new(vec![server.http_base()]);
    cfg.users = 20;
    // Two devices each: the recipient's both and the sender's other device
    // must all get every message.
    cfg.devices = 2;
    cfg.register = true;
    cfg.prefix = "smoke".into();
    cfg.profile = RateProfile::flat(200.0, 3.0);
    cfg.shares = Shares {
        once: 0.2,
        media: 0.0,
        typing: 0.1,
        view: 1.0,
        delivered: 0.3,
        read: 0.1,
    };
    cfg.drain = 10.0;

    let report = run::run(&cfg).await.expect("the load run completes");
    let c = &report.counts;
    let table = report.summary_table();

    assert_eq!(c.scheduled, 600, "3 s at 200 msg/s:\n{table}");
    assert_eq!(c.sent, c.scheduled, "every due message was sent:\n{table}");
    assert_eq!(c.acked, c.sent, "every send was acked:\n{table}");
    assert_eq!(c.lost, 0, "no acked message may be lost:\n{table}");
    assert_eq!(c.lost_device_deliveries, 0, "{table}");
    assert_eq!(
        c.duplicates, 0,
        "no device may get a message twice:\n{table}"
    );
    assert_eq!(c.duplicate_acks, 0, "{table}");
    assert_eq!(c.unexpected, 0, "the sending device gets no copy:\n{table}");
    assert_eq!(c.delivered_without_ack, 0, "{table}");
    assert_eq!(c.delivered, c.acked, "{table}");
    // Three slots per message: the recipient's two devices and the
    // sender's other device.
    assert_eq!(c.device_deliveries, 3 * c.acked, "{table}");
    assert!(c.errors_by_code.is_empty(), "no error frames:\n{table}");
    assert_eq!(c.sockets_closed, 0, "{table}");
    assert!(report.verified(), "{table}");
    // The side traffic flowed: every view of a once message was granted.
    let s = &report.side;
    assert!(s.views_sent > 0, "{table}");
    assert_eq!(s.views_granted, s.views_sent, "{table}");
    assert!(s.receipts_delivered > 0 && s.receipts_read > 0, "{table}");
    assert!(report.latency.delivery.count == c.delivered, "{table}");
    assert!(!report.series.is_empty(), "a point per second");
}
