//! Builds kiln's static init (crates/init) and hands it to the crate as
//! `$OUT_DIR/kiln-init`, so that a plain `cargo build`/`cargo test` needs no extra step.
//!
//! A nested `cargo build -p kiln-init --release --target <target>` in a private target
//! directory, with `-Ctarget-feature=+crt-static` (and a non-PIE static link: nothing to
//! self-relocate at start-up) given through CARGO_ENCODED_RUSTFLAGS: with an explicit
//! `--target` the flags reach only the init, not build scripts or proc-macros. The nested cargo shares the outer jobserver (CARGO_MAKEFLAGS), so the
//! two never run more jobs than asked for.
//!
//! `KILN_INIT_BINARY=/path` skips the nested build and embeds that file instead (for
//! packagers); either way the result must be a static ELF (no PT_INTERP).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        eprintln!("kiln-initrd build script: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no manifest dir")?);
    let init_dir = manifest.join("../init");
    let dest = out_dir.join("kiln-init");
    println!("cargo:rerun-if-env-changed=KILN_INIT_BINARY");

    let built: PathBuf = if let Some(p) = env::var_os("KILN_INIT_BINARY") {
        println!("cargo:rerun-if-changed={}", Path::new(&p).display());
        PathBuf::from(p)
    } else {
        for f in [
            "src",
            "Cargo.toml",
            "../pattern/src",
            "../pattern/Cargo.toml",
        ] {
            println!("cargo:rerun-if-changed={}", init_dir.join(f).display());
        }
        let workspace = manifest.join("../..");
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join("Cargo.lock").display()
        );
        let target = env::var("TARGET").map_err(|e| format!("TARGET: {e}"))?;
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target_dir = out_dir.join("init-target");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&workspace)
            .args(["build", "-p", "kiln-init", "--release", "--target", &target])
            .arg("--target-dir")
            .arg(&target_dir)
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Ctarget-feature=+crt-static\x1f-Crelocation-model=static",
            )
            // Only the init is built here, so LTO (a whole-build setting) can be set
            // for it alone.
            .env("CARGO_PROFILE_RELEASE_LTO", "true")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_PRIMARY_PACKAGE")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        if let Some(mf) = env::var_os("CARGO_MAKEFLAGS") {
            cmd.env("MAKEFLAGS", mf);
        }
        if env::var_os("CARGO_NET_OFFLINE").is_some() {
            cmd.arg("--offline");
        }
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo for kiln-init: {e}"))?;
        if !status.success() {
            return Err(format!("building the static kiln-init failed ({status})"));
        }
        target_dir.join(&target).join("release").join("kiln-init")
    };
    let bytes = fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
    let interp = kiln_elf::has_interp(&bytes)
        .map_err(|why| format!("the init {}: {why}", built.display()))?;
    if interp {
        return Err(format!(
            "{} is dynamically linked (has PT_INTERP); the initrd needs a static init",
            built.display()
        ));
    }
    fs::write(&dest, &bytes).map_err(|e| format!("{}: {e}", dest.display()))?;
    // The init's hash, for `fingerprint()`: hashed once here instead of on every cache
    // lookup (the lookup is libguestfs's per-launch cost).
    let hash = out_dir.join("kiln-init.blake3");
    fs::write(&hash, blake3::hash(&bytes).as_bytes())
        .map_err(|e| format!("{}: {e}", hash.display()))?;
    Ok(())
}
