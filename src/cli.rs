//! `ephemera admin ...`: the operator's commands, spoken to the admin
//! listener over HTTP and printed as readable tables.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::Value;

/// Where the admin listener is and how to authenticate to it.
#[derive(clap::Args, Debug)]
pub struct AdminTarget {
    /// Base URL of the admin listener.
    #[arg(
        long,
        env = "EPHEMERA_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin_url: String,
    /// File holding the admin token, used when EPHEMERA_ADMIN_TOKEN is unset.
    #[arg(long, default_value = "data/admin.token")]
    pub token_file: PathBuf,
}

/// Operator commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// List live actors with their summaries.
    Actors {
        /// Only this kind: user or conversation.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Restart a live actor through its supervisor.
    Restart {
        /// user or conversation.
        kind: String,
        /// Its id.
        id: String,
    },
    /// The deletion report: logical backlog, key-shred lag, physical window.
    Deletion,
    /// The cluster: this node, its lease, every registered node and its
    /// heartbeat; `forget NODE_ID` forgets a lost node.
    Cluster {
        /// What to do; nothing: show the cluster.
        #[command(subcommand)]
        action: Option<ClusterAction>,
    },
    /// Grant or revoke the moderator role (PROTOCOL 7).
    Moderator {
        /// grant or revoke.
        #[arg(value_enum)]
        action: ModeratorAction,
        /// The user's id.
        user_id: String,
    },
    /// The moderators' access log, in order, from after a seq.
    AccessLog {
        /// Only entries after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

/// What `ephemera admin cluster` does besides showing it.
#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Forget a node whose data directory is lost: its conversations,
    /// stories and users' homes are released (to be claimed anew, empty)
    /// and its node id may start again on a new data directory. Refused
    /// while the node is live.
    Forget {
        /// The lost node's id.
        node_id: String,
    },
}

/// What `ephemera admin moderator` does.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ModeratorAction {
    /// Make the user a moderator.
    Grant,
    /// Take the role away.
    Revoke,
}

fn token(target: &AdminTarget) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("EPHEMERA_ADMIN_TOKEN") {
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let t = std::fs::read_to_string(&target.token_file).with_context(|| {
        format!(
            "reading the admin token from {}",
            target.token_file.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

/// Runs one admin command; returns the text to print.
pub async fn run(target: AdminTarget, cmd: AdminCommand) -> anyhow::Result<String> {
    let token = token(&target)?;
    let base = target.admin_url.trim_end_matches('/');
    let client = reqwest::Client::new();
    let (req, render): (_, fn(&Value) -> String) = match &cmd {
        AdminCommand::Actors { kind } => {
            let url = match kind {
                Some(k) => format!("{base}/admin/actors?kind={k}"),
                None => format!("{base}/admin/actors"),
            };
            (client.get(url), actors_table)
        }
        AdminCommand::Restart { kind, id } => (
            client.post(format!("{base}/admin/actors/{kind}/{id}/restart")),
            |_| "restart accepted".to_owned(),
        ),
        AdminCommand::Deletion => (client.get(format!("{base}/admin/deletion")), deletion_table),
        AdminCommand::Cluster { action: None } => {
            (client.get(format!("{base}/admin/cluster")), cluster_table)
        }
        AdminCommand::Cluster {
            action: Some(ClusterAction::Forget { node_id }),
        } => (
            client.delete(format!("{base}/admin/cluster/members/{node_id}")),
            |b| {
                format!(
                    "forgot {}: {} placements released",
                    b["node_id"].as_str().unwrap_or("?"),
                    b["placements_released"]
                )
            },
        ),
        AdminCommand::Moderator { action, user_id } => {
            let url = format!("{base}/admin/moderators/{user_id}");
            match action {
                ModeratorAction::Grant => (client.put(url), |_| "moderator granted".to_owned()),
                ModeratorAction::Revoke => (client.delete(url), |_| "moderator revoked".to_owned()),
            }
        }
        AdminCommand::AccessLog { after } => (
            client.get(format!("{base}/admin/moderation/access-log?after={after}")),
            access_log_table,
        ),
    };
    let resp = req
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.without_url()))?;
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = body["error"]["message"].as_str().unwrap_or("no detail");
        bail!("the admin listener answered {status}: {msg}");
    }
    Ok(render(&body))
}

/// A fixed-width table.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The objects of `body[list]` as a table of `cols`, with a count line
/// (`({n} {what})`).
fn list_table(body: &Value, list: &str, cols: &[&str], what: &str) -> String {
    let rows: Vec<Vec<String>> = body[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| cols.iter().map(|c| cell(&x[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    format!("{}\n({} {what})", table(cols, &rows), rows.len())
}

fn actors_table(body: &Value) -> String {
    let cols = [
        "kind",
        "id",
        "attached",
        "timers_armed",
        "uptime_seconds",
        "restarts",
    ];
    list_table(body, "actors", &cols, "live")
}

fn access_log_table(body: &Value) -> String {
    let cols = ["seq", "at", "moderator", "action", "case_id"];
    list_table(body, "entries", &cols, "entries")
}

fn cluster_table(body: &Value) -> String {
    if body["mode"] == "single" {
        return "single node (no cluster configured)".into();
    }
    let head = format!(
        "node {}  epoch {}  lease {}",
        cell(&body["node_id"]),
        cell(&body["epoch"]),
        if body["lease_held"] == true {
            "held"
        } else {
            "LOST"
        },
    );
    let cols = [
        "node_id",
        "live",
        "last_heartbeat_at",
        "epoch",
        "advertise_url",
    ];
    format!(
        "{head}\n{}",
        list_table(body, "members", &cols, "registered")
    )
}

fn deletion_table(body: &Value) -> String {
    let rows: Vec<Vec<String>> = body
        .as_object()
        .map(|o| o.iter().map(|(k, v)| vec![k.clone(), cell(v)]).collect())
        .unwrap_or_default();
    table(&["measure", "value"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["a", "bb"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "a     bb\nlong  x");
        let body = serde_json::json!({"actors": [{"kind": "user", "id": "ab", "attached": 2}]});
        let t = actors_table(&body);
        assert!(t.contains("user") && t.contains("(1 live)"), "{t}");
    }
}
