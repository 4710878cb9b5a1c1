//! The committed fuzz seeds (`fuzz/seeds/<target>/`) are current: each wire seed still gets
//! past the header's magic and version checks (a `valid-*` one parses whole; tcpxsock's
//! handle and hello seeds likewise, its request header ones parse or not), every target
//! has seeds, and the files are exactly what the generator makes now
//! (`scripts/fuzz-seeds.sh` rewrites them after a format change).

#[path = "../examples/fuzz_seeds/seeds/mod.rs"]
mod seeds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tcpx_core::abi::HANDLE_MAX_SIZE;
use tcpx_core::wire::sock::{self, SockHandle, SockHello, SockRequestHeader};
use tcpx_core::wire::{self, Error, Kind, HEADER_LEN, MAGIC, VERSION};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

/// `target/name` → bytes of every committed seed.
fn committed() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let dir = seeds_dir();
    for t in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let t = t.unwrap();
        assert!(
            t.file_type().unwrap().is_dir(),
            "{:?} is not a folder",
            t.path()
        );
        for f in std::fs::read_dir(t.path()).unwrap() {
            let f = f.unwrap();
            let key = format!(
                "{}/{}",
                t.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            out.insert(key, std::fs::read(f.path()).unwrap());
        }
    }
    out
}

/// The targets `fuzz/Cargo.toml` declares (its `[[bin]]` names).
fn declared_targets() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/Cargo.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(v) = line.strip_prefix("name = ").filter(|_| in_bin) {
            out.push(v.trim_matches('"').to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn committed_seeds_are_what_the_generator_makes() {
    let want: BTreeMap<String, Vec<u8>> = seeds::all()
        .into_iter()
        .map(|s| (format!("{}/{}", s.target, s.name), s.bytes))
        .collect();
    let have = committed();
    let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(*k)).collect();
    let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(*k)).collect();
    let changed: Vec<_> = want
        .iter()
        .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && changed.is_empty(),
        "fuzz/seeds is stale (run scripts/fuzz-seeds.sh): missing {missing:?}, not generated \
         {extra:?}, different {changed:?}"
    );
}

#[test]
fn every_fuzz_target_has_seeds() {
    let targets = declared_targets();
    assert_eq!(targets.len(), 20, "fuzz/Cargo.toml's targets: {targets:?}");
    let have = committed();
    let mut dirs: Vec<String> = have
        .keys()
        .map(|k| k.split('/').next().unwrap().to_string())
        .collect();
    dirs.dedup();
    assert_eq!(dirs, targets, "one fuzz/seeds folder per target");
    for t in &targets {
        let n = have
            .keys()
            .filter(|k| k.starts_with(&format!("{t}/")))
            .count();
        assert!((3..=30).contains(&n), "{t}: {n} seeds");
    }
}

/// The header's kind if magic and version are current.
fn current_header(b: &[u8]) -> Option<u16> {
    if b.len() < HEADER_LEN || b[..4] != MAGIC.to_le_bytes() || b[4..6] != VERSION.to_le_bytes() {
        return None;
    }
    Some(u16::from_le_bytes([b[6], b[7]]))
}

/// A `valid-*` frame parses as `kind` (any kind if `None`) and re-emits to the same bytes;
/// an `edge-*` frame has a current header and is refused after it.
fn check_frame(key: &str, name: &str, b: &[u8], kind: Option<Kind>) {
    let Some(k) = current_header(b) else {
        panic!("{key}: no current header (magic TCPX, version {VERSION})");
    };
    if let Some(kind) = kind {
        assert_eq!(k, kind as u16, "{key}: header kind");
    }
    let parsed = wire::parse(b);
    if name.starts_with("valid") {
        let m = parsed.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(kind.unwrap_or(m.kind()), m.kind(), "{key}");
        let mut out = vec![0u8; m.buffer_len()];
        m.emit(&mut out).unwrap();
        assert_eq!(out, b, "{key}: re-emit");
    } else {
        assert!(
            name.starts_with("edge"),
            "{key}: a wire seed is valid-* or edge-*"
        );
        match parsed {
            Ok(m) => panic!("{key}: an edge seed parsed as {m:?}"),
            Err(e @ (Error::BadMagic(_) | Error::BadVersion(_))) => {
                panic!("{key}: stops at the header check: {e}")
            }
            Err(_) => {}
        }
    }
}

/// A `valid-*` stream is whole frames that all parse; an `edge-*` stream's frames parse and
/// it ends mid-frame or on a header refused after its version check.
fn check_stream(key: &str, name: &str, b: &[u8]) {
    let mut rest = b;
    let mut frames = 0;
    while let Ok(Some(f)) = wire::next_frame(rest) {
        check_frame(key, "valid", f, None);
        rest = &rest[f.len()..];
        frames += 1;
    }
    assert!(frames >= 1, "{key}: no whole frame");
    if name.starts_with("valid") {
        assert!(
            rest.is_empty(),
            "{key}: {} bytes after the frames",
            rest.len()
        );
        return;
    }
    assert!(
        !rest.is_empty(),
        "{key}: an edge stream ends on a partial or bad frame"
    );
    match wire::peek_frame(rest) {
        Ok(None) => {}
        Ok(Some(n)) => assert!(n > rest.len(), "{key}"),
        Err(e @ (Error::BadMagic(_) | Error::BadVersion(_))) => {
            panic!("{key}: stops at the header check: {e}")
        }
        Err(_) => assert!(current_header(rest).is_some(), "{key}"),
    }
}

/// A tcpxsock seed: `valid-*` parses and re-emits to the same bytes (a handle over a copy of
/// the seed, which may be NCCL's whole 128 bytes); `edge-*` is refused, and a handle or hello
/// one carries the current magic and version and is refused after them.
fn check_sock(key: &str, target: &str, name: &str, b: &[u8]) {
    let parsed: Result<Vec<u8>, Error> = match target {
        "sock_handle" => SockHandle::parse(b).map(|h| {
            let mut out = b[..b.len().min(HANDLE_MAX_SIZE)].to_vec();
            assert_eq!(h.emit(&mut out), Ok(sock::HANDLE_LEN), "{key}");
            assert_eq!(SockHandle::parse(&out), Ok(h), "{key}");
            out
        }),
        "sock_hello" => SockHello::parse(b).map(|h| h.to_bytes().unwrap().to_vec()),
        "sock_request" => SockRequestHeader::parse(b).map(|h| h.to_bytes().unwrap().to_vec()),
        _ => unreachable!("{key}"),
    };
    if name.starts_with("valid") {
        let out = parsed.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(out, b, "{key}: re-emit");
        return;
    }
    assert!(
        name.starts_with("edge"),
        "{key}: a wire seed is valid-* or edge-*"
    );
    if target != "sock_request" {
        assert!(
            b.len() >= 6
                && b[..4] == sock::MAGIC.to_le_bytes()
                && b[4..6] == sock::VERSION.to_le_bytes(),
            "{key}: no current magic and version (TXSK, version {})",
            sock::VERSION
        );
    }
    match parsed {
        Ok(_) => panic!("{key}: an edge seed parsed"),
        Err(e @ (Error::BadMagic(_) | Error::BadVersion(_))) => {
            panic!("{key}: stops at the magic/version check: {e}")
        }
        Err(_) => {}
    }
}

#[test]
fn committed_wire_seeds_get_past_the_version_check() {
    let all = committed();
    let mut checked = BTreeMap::<&str, (usize, usize)>::new();
    for (key, bytes) in &all {
        let (target, name) = key.split_once('/').unwrap();
        let kind = seeds::KIND_TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, k)| *k);
        match (target, kind) {
            (_, Some(kind)) => check_frame(key, name, bytes, Some(kind)),
            ("parse", None) => check_frame(key, name, bytes, None),
            ("frame", None) => check_stream(key, name, bytes),
            ("sock_handle" | "sock_hello" | "sock_request", None) => {
                check_sock(key, target, name, bytes)
            }
            // Operation streams and window/planner events: no header of their own; the
            // generator asserts what each means and the first test pins the bytes.
            ("machines" | "control" | "control_backend" | "handshake", None) => continue,
            _ => panic!("{key}: a seed for an unknown target"),
        }
        let e = checked.entry(target).or_default();
        if name.starts_with("valid") {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    assert_eq!(checked.len(), 16, "wire targets with seeds: {checked:?}");
    for (t, (valid, edge)) in checked {
        assert!(
            valid >= 2 && edge >= 1,
            "{t}: {valid} valid, {edge} edge seeds"
        );
    }
}
