//! Generates, from the OpAMP `.proto` files shipped in this crate (protox is
//! pure Rust: no `protoc` needed):
//! - the prost types (`proto`);
//! - one constant per field number (`fields`), so policies name fields
//!   rather than hard-code numbers.

use std::fmt::Write as _;

use prost_types::DescriptorProto;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `proto/` (like `wit/`) links to the gateway's own files in this
    // repository; `cargo package` copies them in, so the published crate
    // builds on its own.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let files = [root.join("opamp.proto"), root.join("anyvalue.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    let mut consts = String::new();
    for file in &descriptors.file {
        for message in &file.message_type {
            write_fields(&mut consts, message, 0)?;
        }
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("fields.rs"), consts)?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

/// `pub mod agent_to_server { pub const INSTANCE_UID: u32 = 1; .. }`, with
/// nested messages as nested modules.
fn write_fields(out: &mut String, message: &DescriptorProto, depth: usize) -> std::fmt::Result {
    let pad = "    ".repeat(depth);
    let name = message.name();
    writeln!(out, "{pad}/// Field numbers of `{name}`.")?;
    writeln!(out, "{pad}pub mod {} {{", snake(name))?;
    for field in &message.field {
        writeln!(out, "{pad}    /// `{name}.{}`", field.name())?;
        writeln!(out, "{pad}    pub const {}: u32 = {};", field.name().to_ascii_uppercase(), field.number())?;
    }
    for nested in &message.nested_type {
        write_fields(out, nested, depth + 1)?;
    }
    writeln!(out, "{pad}}}")
}

/// `AgentToServer` → `agent_to_server`, `TLSCertificate` → `tls_certificate`
/// (prost's rule: an upper-case run is one word).
fn snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut s = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && !chars[i - 1].is_ascii_uppercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}
