//! `wattline user add|list`: manage accounts from the command line, on the same storage the
//! server uses (the first admin of a new installation is created this way).

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use serde_json::json;
use wattline_domain::{AuditEvent, TsMs};

use crate::config::Config;

pub struct AddArgs {
    pub email: String,
    pub role: String,
    pub sites: Vec<String>,
    /// Read the password from the first line of stdin (for scripts), even on a terminal.
    pub password_stdin: bool,
}

/// The password: the first line of stdin when scripted, else typed twice without echo.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password("Password: ").context("reading the password")?;
    let again = rpassword::prompt_password("Password again: ").context("reading the password")?;
    anyhow::ensure!(first == again, "the two passwords differ");
    Ok(first)
}

pub async fn add(config: &Config, args: AddArgs) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin)?;
    let store = crate::serve::open_store(config).await?;
    crate::serve::ensure_default_site(&store, &config.timezone).await?;
    let user = wattline_web::accounts::create_user_record(
        &store,
        &args.email,
        password,
        &args.role,
        &args.sites,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code))?;
    store
        .append_audit(&AuditEvent {
            id: 0,
            ts: TsMs::now(),
            actor: "cli".into(),
            action: "user_created".into(),
            target: format!("user:{}", user.id),
            address: String::new(),
            detail: json!({"email": user.email, "role": user.role, "sites": user.sites})
                .to_string(),
        })
        .await?;
    println!("{}", wattline_web::accounts::user_json(&user));
    Ok(())
}

pub async fn list(config: &Config) -> anyhow::Result<()> {
    let store = crate::serve::open_store(config).await?;
    for user in store.list_users().await? {
        println!("{}", wattline_web::accounts::user_json(&user));
    }
    Ok(())
}
