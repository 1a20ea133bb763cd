//! `hush node join-token|ls|inspect|update|rm`.

use super::output::{ListFlags, Listing, ago, print_json, print_listing};
use super::{Connection, call_error};
use crate::client::connect_admin;
use clap::{Args, Subcommand};
use hush_proto::v1 as pb;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Make a token agents join with (shown once: the vault keeps only its hash); `ls` and
    /// `rm` list and revoke the outstanding ones
    JoinToken(JoinTokenArgs),
    /// List nodes
    #[command(alias = "list")]
    Ls(ListFlags),
    /// Show nodes (JSON, or text with --pretty)
    Inspect {
        #[arg(required = true, value_name = "NODE")]
        references: Vec<String>,
        #[arg(long)]
        pretty: bool,
    },
    /// Change a node's labels (services are placed by them)
    Update {
        #[arg(value_name = "NODE")]
        reference: String,
        /// Add or change a label, KEY=VALUE or KEY (repeatable)
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a label (repeatable; it must exist)
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
    },
    /// Remove nodes: their certificates are refused and their streams cut at once
    #[command(alias = "remove")]
    Rm {
        /// Node ID, unique ID prefix or name
        #[arg(required = true, value_name = "NODE")]
        references: Vec<String>,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct JoinTokenArgs {
    #[command(subcommand)]
    action: Option<TokenAction>,
    /// Only the token
    #[arg(short, long)]
    quiet: bool,
    /// How long the token admits nodes
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
    ttl: u64,
    /// How many nodes may join with it (default: any number until it expires)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    uses: Option<u64>,
    /// A label for every node that joins with it (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Revoke every outstanding token first (joined nodes are not affected)
    #[arg(long)]
    rotate: bool,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// List the outstanding join tokens: ID, uses left, expiry, labels (never the token itself)
    #[command(alias = "list")]
    Ls(ListFlags),
    /// Revoke join tokens by ID (nodes that joined with them stay)
    #[command(alias = "remove")]
    Rm {
        /// Token ID or unique ID prefix, as `ls` shows it
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

fn uses_left(t: &pb::JoinTokenInfo) -> Option<u64> {
    (t.max_uses > 0).then(|| t.max_uses.saturating_sub(t.uses))
}

fn token_json(t: &pb::JoinTokenInfo) -> Value {
    let expired = chrono::DateTime::parse_from_rfc3339(&t.expires_at).is_ok_and(|e| e <= chrono::Utc::now());
    json!({
        "ID": t.id,
        "Labels": sorted(&t.labels),
        "Uses": t.uses,
        "MaxUses": (t.max_uses > 0).then_some(t.max_uses),
        "UsesLeft": uses_left(t),
        "ExpiresAt": t.expires_at,
        "Expired": expired,
        "CreatedAt": t.created_at,
        "CreatedBy": t.created_by,
    })
}

async fn join_token(
    client: &mut hush_proto::v1::admin_client::AdminClient<tonic::transport::Channel>,
    args: JoinTokenArgs,
    vault: &str,
) -> anyhow::Result<ExitCode> {
    match args.action {
        None => {
            let request = pb::JoinTokenRequest {
                rotate: args.rotate,
                ttl_seconds: args.ttl,
                uses: args.uses.unwrap_or(0),
                labels: parse_labels(&args.labels).into_iter().collect(),
            };
            let response = client.join_token(request).await.map_err(call_error)?.into_inner();
            if args.quiet {
                println!("{}", response.token);
            } else {
                print_token(&response, vault);
            }
        }
        Some(TokenAction::Ls(ListFlags { quiet, format })) => {
            let tokens =
                client.join_token_list(pb::JoinTokenListRequest {}).await.map_err(call_error)?.into_inner().tokens;
            let now = chrono::Utc::now();
            let row = |t: &pb::JoinTokenInfo| {
                let labels: Vec<String> = sorted(&t.labels).iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    t.id.clone(),
                    uses_left(t).map_or("unlimited".to_string(), |n| n.to_string()),
                    super::output::expiry(&t.expires_at, now),
                    labels.join(","),
                ]
            };
            let listing = Listing {
                id: |t: &pb::JoinTokenInfo| &t.id,
                json: &token_json,
                header: &["ID", "USES LEFT", "EXPIRES", "LABELS"],
                row: &row,
            };
            print_listing(&tokens, quiet, format, &listing)?;
        }
        Some(TokenAction::Rm { ids }) => {
            let client = &*client;
            return Ok(super::remove_each(ids, |reference| {
                let mut client = client.clone();
                async move { client.join_token_remove(pb::JoinTokenRemoveRequest { reference }).await.map(drop) }
            })
            .await);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_ttl(text: &str) -> Result<u64, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 30m, 24h, 7d)"))?;
    match ttl.as_secs() {
        0 => Err("the ttl must be at least one second".into()),
        s => Ok(s),
    }
}

/// Docker's label syntax: `KEY=VALUE`, or `KEY` for an empty value.
fn parse_labels(texts: &[String]) -> BTreeMap<String, String> {
    texts
        .iter()
        .map(|t| {
            let (k, v) = t.split_once('=').unwrap_or((t, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn status(n: &pb::NodeInfo) -> &'static str {
    if n.ready { "Ready" } else { "Down" }
}

fn sorted(labels: &std::collections::HashMap<String, String>) -> BTreeMap<&String, &String> {
    labels.iter().collect()
}

fn node_json(n: &pb::NodeInfo) -> Value {
    json!({"ID": n.id, "Name": n.name, "Status": status(n), "Labels": sorted(&n.labels), "LastSeen": n.last_seen, "JoinedAt": n.joined_at, "Tasks": n.tasks})
}

fn inspect_json(n: &pb::NodeInfo) -> Value {
    json!({
        "ID": n.id,
        "Name": n.name,
        "Status": status(n),
        "Role": crate::placement::NODE_ROLE,
        "Labels": sorted(&n.labels),
        "Platform": {"OS": n.os, "Architecture": n.arch},
        "Tasks": n.tasks,
        "JoinedAt": n.joined_at,
        "LastSeen": n.last_seen,
        "JoinToken": n.join_token_id,
    })
}

fn print_pretty(nodes: &[pb::NodeInfo]) {
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("ID:              {}", n.id);
        println!("Name:            {}", n.name);
        println!("Status:          {}", status(n));
        println!("Role:            {}", crate::placement::NODE_ROLE);
        if !n.labels.is_empty() {
            println!("Labels:");
            for (k, v) in sorted(&n.labels) {
                println!(" - {k}={v}");
            }
        }
        println!("Platform:");
        println!(" OS:             {}", n.os);
        println!(" Architecture:   {}", n.arch);
        println!("Tasks:           {}", n.tasks);
        println!("Joined at:       {}", n.joined_at);
        println!("Last seen:       {}", n.last_seen);
        if !n.join_token_id.is_empty() {
            println!("Join token:      {}", n.join_token_id);
        }
    }
}

fn print_token(response: &pb::JoinTokenResponse, vault: &str) {
    println!("To add a node to this vault, put this token in a file on the node that only root can read:");
    println!();
    println!("    {}", response.token);
    println!();
    println!("then run there, as root:");
    println!();
    println!(
        "    hush-agent --vault {vault} --join-token-file FILE --state-dir /var/lib/hush-agent --mount-root /run/hush"
    );
    println!();
    let uses = match response.uses {
        0 => "any number of nodes".to_string(),
        1 => "one node".to_string(),
        n => format!("up to {n} nodes"),
    };
    println!("Token {} admits {uses} until {}. It is shown only now.", response.id, response.expires_at);
    if response.revoked > 0 {
        println!("Revoked {} earlier token(s).", response.revoked);
    }
}

pub async fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect_admin(&args.connection.target()).await?;
    match args.command {
        NodeCommand::JoinToken(token_args) => {
            return join_token(&mut client, token_args, args.connection.vault.as_deref().unwrap_or("VAULT:7443")).await;
        }
        NodeCommand::Ls(ListFlags { quiet, format }) => {
            let nodes = client.node_list(pb::NodeListRequest {}).await.map_err(call_error)?.into_inner().nodes;
            let now = chrono::Utc::now();
            let row = |n: &pb::NodeInfo| {
                vec![n.id.clone(), n.name.clone(), status(n).to_string(), n.tasks.to_string(), ago(&n.last_seen, now)]
            };
            let listing = Listing {
                id: |n: &pb::NodeInfo| &n.id,
                json: &node_json,
                header: &["ID", "NAME", "STATUS", "TASKS", "LAST SEEN"],
                row: &row,
            };
            print_listing(&nodes, quiet, format, &listing)?;
        }
        NodeCommand::Inspect { references, pretty } => {
            let mut found = Vec::new();
            let mut failed = false;
            for reference in references {
                match client.node_inspect(pb::NodeInspectRequest { reference }).await {
                    Ok(r) => found.extend(r.into_inner().node),
                    Err(status) => {
                        eprintln!("error: {}", call_error(status));
                        failed = true;
                    }
                }
            }
            if pretty {
                print_pretty(&found);
            } else if !found.is_empty() || !failed {
                print_json(&Value::Array(found.iter().map(inspect_json).collect()))?;
            }
            return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        NodeCommand::Update { reference, label_add, label_rm } => {
            let request = pb::NodeUpdateRequest {
                reference: reference.clone(),
                label_add: parse_labels(&label_add).into_iter().collect(),
                label_rm,
            };
            client.node_update(request).await.map_err(call_error)?;
            // As Docker: the node as it was named.
            println!("{reference}");
        }
        NodeCommand::Rm { references } => {
            let client = &client;
            return Ok(super::remove_each(references, |reference| {
                let mut client = client.clone();
                async move { client.node_remove(pb::NodeRemoveRequest { reference }).await.map(drop) }
            })
            .await);
        }
    }
    Ok(ExitCode::SUCCESS)
}
