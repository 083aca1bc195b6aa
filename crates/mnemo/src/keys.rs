//! `mnemo keys`: create, list and revoke API keys (for `mnemo serve --auth keys`).
//!
//! Keys live in a JSON file (default `DATA_DIR/api-keys.json`) holding only their SHA-256; a
//! running server picks up changes within a second.

use anyhow::Context;
use clap::{Args, Subcommand};
use mnemo_auth::apikeys::{self, NewKey};
use std::path::PathBuf;

/// Options of `mnemo keys`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    /// The server's data directory (the key file defaults to DATA_DIR/api-keys.json).
    #[arg(
        long,
        default_value = "./mnemo-data",
        env = "MNEMO_DATA_DIR",
        global = true
    )]
    data_dir: PathBuf,
    /// The key file, overriding DATA_DIR/api-keys.json.
    #[arg(long, env = "MNEMO_API_KEYS_FILE", global = true)]
    file: Option<PathBuf>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Role granted (repeatable), mapped to permissions like a token's roles,
        /// e.g. Conversations.ReadWrite, Memory.ReadWrite, Search, Admin.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Bind the key to one user (it then acts like that user's token).
        #[arg(long)]
        user: Option<String>,
        /// A note to remember what the key is for.
        #[arg(long)]
        note: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by its id.
    Revoke {
        /// The key id (the 16 hex digits after `mnemo_`).
        id: String,
    },
}

/// Runs `mnemo keys …`.
pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let path = args
        .file
        .unwrap_or_else(|| args.data_dir.join("api-keys.json"));
    match args.command {
        KeysCommand::Create {
            tenant,
            roles,
            user,
            note,
        } => {
            let (key, rec) = apikeys::create_key(
                &path,
                NewKey {
                    tenant,
                    roles,
                    user,
                    note,
                },
            )
            .with_context(|| format!("creating a key in {}", path.display()))?;
            eprintln!(
                "created key {} for tenant {} (stored as a hash in {}); it is shown only once:",
                rec.id,
                rec.tenant,
                path.display()
            );
            println!("{key}");
        }
        KeysCommand::List => {
            for k in apikeys::list_keys(&path)? {
                println!(
                    "{}\ttenant={}\troles={}\tuser={}\tcreated_at={}\t{}{}",
                    k.id,
                    k.tenant,
                    k.roles.join(","),
                    k.user.as_deref().unwrap_or("-"),
                    k.created_at,
                    match k.revoked_at {
                        Some(t) => format!("revoked_at={t}"),
                        None => "active".to_owned(),
                    },
                    k.note.map(|n| format!("\tnote={n}")).unwrap_or_default(),
                );
            }
        }
        KeysCommand::Revoke { id } => {
            apikeys::revoke_key(&path, &id)?;
            eprintln!("revoked key {id}");
        }
    }
    Ok(())
}
