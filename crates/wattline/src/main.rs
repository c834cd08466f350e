//! The `wattline` binary: parses the command line and hands over to the library crates.

mod config;
mod demo;
mod import;
mod serve;
mod tls;
mod user;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Ingest allocates and frees large per-request buffers; glibc's allocator kept handing
/// them back to the kernel and faulting them in again (a quarter of ingest CPU in a profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "wattline", version, about = "Self-hosted energy monitoring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve(ServeArgs),
    /// Start the server with a simulated site (a home, a three-phase building, a mining farm);
    /// takes `serve`'s flags and picks free ports where the default ones are taken.
    Demo(ServeArgs),
    /// Print every configuration option with its default, as TOML with comments.
    Config,
    /// Backfill historical readings (CSV or line protocol) into a running server; running it
    /// twice stores each reading once.
    Import(ImportCli),
    /// Manage user accounts on the server's storage (the first admin is added this way).
    #[command(subcommand)]
    User(UserCommand),
    /// Simulated meters (households, three-phase buildings, mining rigs) sending to a server
    /// over HTTP, MQTT or TCP, with store-and-forward.
    Simulate(Box<wattline_simulator::cli::SimulateArgs>),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP API address, e.g. 0.0.0.0:8080 (port 0 picks a free one).
    #[arg(long)]
    http: Option<String>,
    /// PEM certificate chain: with --tls-key, the HTTP API serves HTTPS only.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate made on first start in <data-dir>/tls/.
    #[arg(long)]
    tls_self_signed: bool,
    /// Built-in MQTT broker address, e.g. 0.0.0.0:1883 (port 0 picks a free one; `off` disables).
    #[arg(long)]
    mqtt: Option<String>,
    /// TLS listener of the built-in broker (needs mqtt_tls_cert and mqtt_tls_key).
    #[arg(long)]
    mqtts: Option<String>,
    /// External broker instead of the built-in one: mqtt://user:pass@host:port or mqtts://…
    #[arg(long)]
    mqtt_broker: Option<String>,
    /// Listener for raw TCP socket meters, e.g. 0.0.0.0:4005 (port 0 picks a free one; off by default).
    #[arg(long)]
    tcp: Option<String>,
    /// Data directory (embedded database, generated admin token).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL instead of the embedded store.
    #[arg(long)]
    database: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user. The password is prompted twice, or read from the first line of stdin when
    /// stdin is not a terminal (or with --password-stdin).
    Add {
        /// Login e-mail address.
        email: String,
        /// admin, owner or viewer.
        #[arg(long)]
        role: String,
        /// A site the owner or viewer may see (repeat for several).
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Read the password from stdin even on a terminal.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// List users as JSON lines.
    List {
        #[command(flatten)]
        storage: StorageArgs,
    },
}

/// Where the data is, as for `serve`.
#[derive(Args, Debug)]
struct StorageArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (embedded database).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL instead of the embedded store.
    #[arg(long)]
    database: Option<String>,
}

impl StorageArgs {
    fn into_serve_args(self) -> ServeArgs {
        ServeArgs {
            config: self.config,
            http: None,
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            mqtt: None,
            mqtts: None,
            mqtt_broker: None,
            tcp: None,
            data_dir: self.data_dir,
            database: self.database,
            log_format: None,
        }
    }
}

#[derive(Args, Debug)]
struct ImportCli {
    /// CSV (with a header naming the columns) or line-protocol file.
    file: PathBuf,
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin, site ingest or device token; `@path` reads it from a file.
    #[arg(long, env = "WATTLINE_IMPORT_TOKEN")]
    token: String,
    /// csv or lp (default: from the file name).
    #[arg(long)]
    format: Option<String>,
    /// Unit of numeric timestamps: s, ms, us or ns (default: line protocol ns; CSV guessed
    /// from the number of digits).
    #[arg(long)]
    precision: Option<String>,
}

/// The layered configuration of `serve` and `demo`, with logging set up; also says which
/// addresses were given explicitly (the demo keeps those even when taken).
fn load_config(args: ServeArgs) -> anyhow::Result<(config::Config, demo::Chosen)> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let chosen = demo::Chosen {
        http: args.http.is_some() || env.contains_key("WATTLINE_HTTP"),
        mqtt: args.mqtt.is_some() || env.contains_key("WATTLINE_MQTT"),
        tcp: args.tcp.is_some() || env.contains_key("WATTLINE_TCP"),
    };
    let flags = config::Overrides {
        http: args.http,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_self_signed: args.tls_self_signed,
        mqtt: args.mqtt,
        mqtts: args.mqtts,
        mqtt_broker: args.mqtt_broker,
        tcp: args.tcp,
        data_dir: args.data_dir,
        database: args.database,
        log_format: args.log_format,
    };
    let (config, warnings) = config::Config::load(args.config.as_deref(), &env, &flags)?;
    serve::init_logging(&config);
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok((config, chosen))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let (config, _) = load_config(args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve::run(config))
        }
        Command::Demo(args) => {
            let (config, chosen) = load_config(args)?;
            let (config, token) = demo::prepare(config, chosen)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(demo::run(config, token))
        }
        Command::Import(args) => {
            let summary = import::run(&import::ImportArgs {
                file: args.file,
                url: args.url,
                token: import::token_arg(&args.token)?,
                format: args.format,
                precision: args.precision,
            })?;
            println!("{}", serde_json::to_string(&summary)?);
            if summary.rejected > 0 {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::User(command) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            match command {
                UserCommand::Add {
                    email,
                    role,
                    sites,
                    password_stdin,
                    storage,
                } => {
                    let (config, _) = load_config(storage.into_serve_args())?;
                    runtime.block_on(user::add(
                        &config,
                        user::AddArgs {
                            email,
                            role,
                            sites,
                            password_stdin,
                        },
                    ))
                }
                UserCommand::List { storage } => {
                    let (config, _) = load_config(storage.into_serve_args())?;
                    runtime.block_on(user::list(&config))
                }
            }
        }
        Command::Simulate(args) => {
            let code = wattline_simulator::cli::main(&args)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Config => {
            let defaults = toml::Table::try_from(config::Config::default())?;
            for (key, doc) in config::docs() {
                println!("# {doc}");
                match defaults.get(*key) {
                    Some(v) => println!("{key} = {v}\n"),
                    None => println!("# {key} = (unset)\n"),
                }
            }
            Ok(())
        }
    }
}
