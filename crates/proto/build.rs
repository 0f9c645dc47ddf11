//! Compiles `proto/weir.proto` with protox (pure Rust), so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/weir.proto");
    let descriptors = protox::compile(["proto/weir.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    // Record batches and other payloads decode as `Bytes` slices of the frame: no copy.
    config.bytes(["."]);
    config.compile_fds(descriptors)?;
    Ok(())
}
