//! The `sdnlinkd` command line.

use crate::config::{self, DEFAULT_CONFIG};
use crate::control::{self, Command as Ctl};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "sdnlinkd",
    version,
    about = "Joins the pod networks of several Kubernetes clusters"
)]
pub struct Cli {
    /// Main configuration file (drop-ins: sdnlink.d/*.toml next to it).
    #[arg(long, global = true, env = "SDNLINK_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration; --print shows the effective merged config.
    CheckConfig {
        #[arg(long)]
        print: bool,
    },
    /// Show what the running daemon is doing.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to re-read its configuration; waits for the result.
    Reload,
    /// Print what a full sync of the running daemon would change right now (tunnel peers,
    /// proxy services, namespace links, addresses and routes), without changing anything.
    /// Exit 0 when nothing would change, 1 when something would, 2 when a part cannot plan.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Check every remote cluster from this node: recent WireGuard handshakes, a DNS lookup
    /// of a Service through the stub, a TCP connection to it. Exit 0 only if all pass.
    Verify {
        /// The Service to look up and connect to in every remote cluster, NAME.NAMESPACE.
        #[arg(long, default_value = "kubernetes.default")]
        service: String,
        /// Its port.
        #[arg(long, default_value_t = 443)]
        port: u16,
    },
    /// Remove everything sdnlinkd owns: namespace, veth, marked routes, tunnel process.
    Cleanup,
    /// Print this node's WireGuard public key (creating the private key if needed).
    Pubkey,
    /// Manage the network namespace (for the unsandboxed ExecStartPre step).
    Netns {
        #[command(subcommand)]
        action: NetnsCmd,
    },
    /// Print a shell completion script (the packages install them for bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, roff source (the packages install it as sdnlinkd(1)).
    Man,
}

#[derive(Debug, Subcommand)]
pub enum NetnsCmd {
    /// Create or adopt /run/netns/<namespace.name>.
    Ensure,
}

/// The running daemon's `status --json` document.
fn daemon_status(
    rt: &tokio::runtime::Runtime,
    cfg: &config::Config,
) -> anyhow::Result<serde_json::Value> {
    let resp = rt.block_on(control::request(
        &cfg.control_socket,
        Ctl::Status,
        Duration::from_secs(10),
    ))?;
    match resp.status.filter(|_| resp.ok) {
        Some(status) => Ok(status),
        None => anyhow::bail!(
            "daemon answered an error: {}",
            resp.error.unwrap_or_default()
        ),
    }
}

/// Entry point of the `sdnlinkd` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Run);
    match command {
        Cmd::Run => {
            // Captured before any thread exists: removing variables from the environment is
            // only sound while single-threaded.
            let notifier = crate::notify::Notifier::from_env();
            let cfg = match config::load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    crate::logging::init("info", true);
                    tracing::error!("{e}");
                    eprintln!("sdnlinkd: {e}");
                    notifier.status(&format!("invalid configuration: {e}"));
                    return ExitCode::from(2);
                }
            };
            crate::logging::init(&cfg.log_level, true);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("sdnlinkd")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sdnlinkd: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(crate::daemon::run(cli.config.clone(), cfg, notifier)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("sdnlinkd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            crate::logging::init("warn", false);
            match run_tool(&cli.config, other) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("sdnlinkd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "sdnlinkd", &mut out);
    out
}

/// The manual page, roff source.
pub fn man_page() -> anyhow::Result<Vec<u8>> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("rendering the manual page")?;
    Ok(out)
}

fn run_tool(path: &std::path::Path, cmd: Cmd) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    match cmd {
        Cmd::Run => unreachable!("handled by main"),
        Cmd::Completions { shell } => {
            std::io::stdout()
                .write_all(&completions(shell))
                .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man => {
            std::io::stdout()
                .write_all(&man_page()?)
                .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { print } => match config::load(path) {
            Ok(cfg) => {
                if print {
                    print!("{}", config::to_toml(&cfg));
                } else {
                    println!("{}: configuration is valid", path.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                Ok(ExitCode::from(2))
            }
        },
        Cmd::Status { json } => {
            let cfg = config::load(path)?;
            let status = daemon_status(&runtime()?, &cfg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::daemon::status::render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { service, port } => {
            let target =
                crate::verify::Target::parse(&service, port).map_err(anyhow::Error::msg)?;
            let cfg = config::load(path)?;
            let rt = runtime()?;
            let status = daemon_status(&rt, &cfg)?;
            let lines = rt.block_on(crate::verify::run(&cfg, &status, &target));
            if lines.is_empty() {
                anyhow::bail!(
                    "no [[remote]] cluster in {}: nothing to verify",
                    path.display()
                );
            }
            for l in &lines {
                println!("{l}");
            }
            let failed = lines.iter().filter(|l| !l.pass).count();
            println!("{} passed, {failed} failed", lines.len() - failed);
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Reload => {
            // The path must stay the daemon's: the running daemon re-reads its own file.
            let cfg = config::load(path).context(
                "the new configuration is invalid; the daemon keeps running the old one",
            )?;
            let resp = runtime()?.block_on(control::request(
                &cfg.control_socket,
                Ctl::Reload,
                Duration::from_secs(120),
            ))?;
            if resp.ok {
                println!("reloaded");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "reload refused, the daemon keeps its running configuration: {}",
                    resp.error.unwrap_or_default()
                );
                Ok(ExitCode::from(2))
            }
        }
        Cmd::Plan { json } => {
            let cfg = config::load(path)?;
            let resp = runtime()?.block_on(control::request(
                &cfg.control_socket,
                Ctl::Plan,
                Duration::from_secs(120),
            ))?;
            let doc = match (resp.ok, resp.status) {
                (true, Some(doc)) => doc,
                (_, _) => anyhow::bail!(
                    "the daemon did not plan: {}",
                    resp.error.unwrap_or_else(|| "no answer".into())
                ),
            };
            let dry: crate::daemon::DryRun = serde_json::from_value(doc.clone())
                .context("the daemon's plan has an unexpected shape")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{dry}");
            }
            let cannot = [&dry.tunnel, &dry.proxy, &dry.node]
                .iter()
                .any(|p| p.error.is_some());
            Ok(if cannot {
                ExitCode::from(2)
            } else if dry.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Cleanup => {
            let (cfg, broken) = config::load_for_cleanup(path)?;
            if let Some(e) = broken {
                eprintln!(
                    "{}: {e}\ncleaning up with its [namespace], [tunnel], control_socket and state_dir settings, which are valid (cleanup needs nothing else)",
                    path.display()
                );
            }
            let report = runtime()?.block_on(crate::daemon::cleanup(&cfg))?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pubkey => {
            let cfg = config::load(path)?;
            let key = crate::tunnel::keys::load_or_create(&cfg.tunnel.private_key_file)?;
            println!("{}", key.public_key().to_base64());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Netns {
            action: NetnsCmd::Ensure,
        } => {
            let cfg = config::load(path)?;
            let created = crate::node::ensure_namespace(&cfg.namespace.name)?;
            println!(
                "/run/netns/{} {}",
                cfg.namespace.name,
                if created { "created" } else { "adopted" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_and_config_is_global() {
        let c = Cli::try_parse_from(["sdnlinkd"]).expect("parse");
        assert!(c.command.is_none());
        let c = Cli::try_parse_from(["sdnlinkd", "status", "--json", "--config", "/x.toml"])
            .expect("parse");
        assert_eq!(c.config, PathBuf::from("/x.toml"));
        assert!(matches!(c.command, Some(Cmd::Status { json: true })));
        let c = Cli::try_parse_from(["sdnlinkd", "netns", "ensure"]).expect("parse");
        assert!(matches!(
            c.command,
            Some(Cmd::Netns {
                action: NetnsCmd::Ensure
            })
        ));
    }

    #[test]
    fn completions_name_every_subcommand_for_each_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let text = String::from_utf8(completions(shell)).expect("completions are UTF-8");
            for sub in Cli::command().get_subcommands() {
                assert!(
                    text.contains(sub.get_name()),
                    "{shell:?} completion lacks {}",
                    sub.get_name()
                );
            }
            // fish spells long options `-l config`.
            assert!(
                text.contains("--config") || text.contains("-l config"),
                "{shell:?} completion lacks --config"
            );
        }
    }

    #[test]
    fn man_page_has_name_synopsis_and_subcommands() {
        let roff = String::from_utf8(man_page().expect("renders")).expect("roff is UTF-8");
        // roff escapes a hyphen in names as `\-`.
        let text = roff.replace("\\-", "-");
        assert!(text.contains(".TH sdnlinkd 1"), "no title header");
        for section in ["NAME", "SYNOPSIS", "SUBCOMMANDS"] {
            assert!(
                text.contains(&format!(".SH {section}")),
                "no {section} section"
            );
        }
        for sub in ["status", "reload", "cleanup", "check-config"] {
            assert!(text.contains(sub), "man page lacks {sub}");
        }
    }
}
