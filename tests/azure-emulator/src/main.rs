//! Runs the emulator on its own (make emulator): prints its URLs and CA path,
//! then serves until interrupted. Faults, counters and the role assignments are
//! under /_emulator/ on the Graph URL.
use std::path::PathBuf;

use azure_emulator::{CLIENT_ID, CLIENT_SECRET, Emulator, IDENTITY_HEADER, TENANT_ID};
use clap::Parser;
use teamaccess_operator::directory::file_format::DirectoryFile;

#[derive(Parser)]
#[command(
    about = "Emulates the Entra ID token endpoint, Microsoft Graph and the Azure Resource Manager role assignments teamaccess-operator uses"
)]
struct Args {
    /// Directory file to serve (the static directory's YAML format).
    #[arg(long, default_value = "deploy/examples/seed/directory.yaml")]
    directory_file: PathBuf,
    /// Where to write the CA certificate and the URL file.
    #[arg(long, default_value = "/tmp/azure-emulator")]
    state_dir: PathBuf,
    /// The address to listen on; the local node's IP lets its pods reach it.
    #[arg(long, default_value = "127.0.0.1")]
    listen_address: std::net::IpAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.directory_file)?;
    let directory = DirectoryFile::parse(&text)?;
    let emulator = Emulator::start_on(directory, &args.state_dir, args.listen_address).await?;
    // Files for scripts: what a client needs to reach and authenticate to it.
    for (name, value) in [
        ("tenant-id", TENANT_ID),
        ("client-id", CLIENT_ID),
        ("client-secret", CLIENT_SECRET),
        ("url", emulator.url()),
        ("arm-url", emulator.arm_url()),
    ] {
        std::fs::write(args.state_dir.join(name), value)?;
    }
    println!("tenant:        {TENANT_ID}");
    println!("client id:     {CLIENT_ID}");
    println!("client secret: {CLIENT_SECRET}");
    println!("identity hdr:  {IDENTITY_HEADER}");
    println!("CA file:       {}", emulator.ca_path().display());
    println!("URL:           {} (Entra ID authority and Graph)", emulator.url());
    println!("ARM URL:       {}", emulator.arm_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
