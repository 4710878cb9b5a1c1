//! Writes the seed inputs of every cargo-fuzz target: `fuzz/seeds/<target>/<name>`
//! (`scripts/fuzz-seeds.sh`, or `cargo run -p tcpx-core --example fuzz_seeds -- [DIR]`).
//!
//! Each target's folder is replaced as a whole, so seeds the generator no longer makes go.

mod seeds;

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds"),
        PathBuf::from,
    );
    let all = seeds::all();
    let mut targets: Vec<&str> = all.iter().map(|s| s.target).collect();
    targets.sort_unstable();
    targets.dedup();
    for t in &targets {
        let dir = root.join(t);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    let mut bytes = 0;
    for s in &all {
        std::fs::write(root.join(s.target).join(&s.name), &s.bytes)?;
        bytes += s.bytes.len();
    }
    println!(
        "{} seeds ({} bytes) for {} targets in {}",
        all.len(),
        bytes,
        targets.len(),
        root.display()
    );
    Ok(())
}
