//! Generates the gRPC code of proto/ with protox (a Rust protobuf compiler), so
//! that building zt needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "../../proto/zt/agent/v1/agent.proto",
        "../../proto/spiffe/workload/workload.proto",
    ];
    let descriptors = protox::compile(protos, ["../../proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
