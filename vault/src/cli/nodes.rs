//! `hush node join-token|ls|rm`.

use super::output::{Format, Listing, ago, print_listing};
use super::{Connection, call_error};
use crate::client::connect_admin;
use clap::{Args, Subcommand};
use hush_proto::v1 as pb;
use serde_json::json;
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
    /// Print the token agents join with
    JoinToken {
        /// Only the token
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token; the old one stops working (joined nodes are not affected)
        #[arg(long)]
        rotate: bool,
    },
    /// List nodes
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove nodes: their certificates are refused and their streams cut at once
    #[command(alias = "remove")]
    Rm {
        /// Node ID, unique ID prefix or name
        #[arg(required = true, value_name = "NODE")]
        references: Vec<String>,
    },
}

pub async fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect_admin(&args.connection.target()).await?;
    match args.command {
        NodeCommand::JoinToken { quiet, rotate } => {
            let token =
                client.join_token(pb::JoinTokenRequest { rotate }).await.map_err(call_error)?.into_inner().token;
            if quiet {
                println!("{token}");
            } else {
                let vault = args.connection.vault.unwrap_or_else(|| "VAULT:7443".into());
                println!("To add a node to this vault, run on it:");
                println!();
                println!(
                    "    hush-agent --vault {vault} --join-token {token} --state-dir /var/lib/hush-agent --mount-root /run/hush"
                );
                println!();
            }
        }
        NodeCommand::Ls { quiet, format } => {
            let nodes = client.node_list(pb::NodeListRequest {}).await.map_err(call_error)?.into_inner().nodes;
            let status = |n: &pb::NodeInfo| if n.ready { "Ready" } else { "Down" };
            let now = chrono::Utc::now();
            let json = |n: &pb::NodeInfo| json!({"ID": n.id, "Name": n.name, "Status": status(n), "LastSeen": n.last_seen, "JoinedAt": n.joined_at, "Tasks": n.tasks});
            let row = |n: &pb::NodeInfo| {
                vec![n.id.clone(), n.name.clone(), status(n).to_string(), n.tasks.to_string(), ago(&n.last_seen, now)]
            };
            let listing = Listing {
                id: |n: &pb::NodeInfo| &n.id,
                json: &json,
                header: &["ID", "NAME", "STATUS", "TASKS", "LAST SEEN"],
                row: &row,
            };
            print_listing(&nodes, quiet, format, &listing)?;
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
