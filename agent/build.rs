//! Compiles the Talos machine API subset in `proto/` with protox (pure Rust, no system protoc).

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let protos = ["machine/machine.proto", "common/common.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed=proto/{p}");
    }
    println!("cargo:rerun-if-changed=proto/google/rpc/status.proto");
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
