//! Generates the tonic/prost code. protoc comes from `protoc-bin-vendored`, so a fresh
//! machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/overlay/v1/overlay.proto",
            "proto/overlay/v1/raft.proto",
            "proto/overlay/local/v1/local.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
