//! Generates the tonic echo service from `proto/echo.proto`, with a vendored `protoc` (none is
//! assumed to be installed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_protos(&["proto/echo.proto"], &["proto"])?;
    Ok(())
}
