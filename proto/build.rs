//! Compiles `proto/bep.proto` with `protox` (a pure-Rust protobuf compiler),
//! so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bep.proto");
    let descriptors = protox::compile(["bep.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
