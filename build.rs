//! Compiles `proto/*.proto` with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/opamp.proto", "proto/anyvalue.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // The top-level field names of the two envelopes, for policy YAML that
    // names fields (`filter_agent_to_server: [effective_config]`).
    let mut table = String::new();
    for (message, constant) in [("AgentToServer", "AGENT_TO_SERVER"), ("ServerToAgent", "SERVER_TO_AGENT")] {
        let fields = descriptors
            .file
            .iter()
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == message)
            .ok_or_else(|| format!("proto/ has no message {message}"))?
            .field
            .iter()
            .map(|f| format!("(\"{}\", {}), ", f.name(), f.number()))
            .collect::<String>();
        table.push_str(&format!(
            "/// `{message}`'s fields by name.\npub(crate) const {constant}: &[(&str, u32)] = &[{fields}];\n"
        ));
    }
    std::fs::write(std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("top_level_fields.rs"), table)?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
