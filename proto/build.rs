//! Generates the tonic services from `proto/rehearse.proto`, with a vendored protoc handed to
//! prost-build directly (never through a global PROTOC, which raft's own build would then use).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // The descriptor set the coordinators serve for gRPC server reflection (grpcurl).
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("rehearse.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &["proto/rehearse.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/rehearse.proto");
    Ok(())
}
