use std::process::ExitCode;

use clap::Parser;
use teamaccess_operator::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    // kube and the Azure SDK both link rustls; pick the provider once for the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => {
            print!("{}", teamaccess_operator::crd_yaml());
            Ok(())
        }
        Command::Run(args) => cli::run(*args).await,
        Command::AccessReport(args) => cli::access_report(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
