//! `mkinitrd OUT [MODULES_DIR]`: write kiln's mini initrd for the host kernel (or the
//! given modules tree) to OUT. Used by scripts/bench-boot.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: mkinitrd OUT [MODULES_DIR]")?);
    let modules = match args.next() {
        Some(m) => PathBuf::from(m),
        None => kiln_kernel::choose_host(std::env::consts::ARCH)?.modules,
    };
    let rep = kiln_initrd::build(&modules, &out)?;
    println!(
        "{}: {} bytes, {} modules: {}",
        out.display(),
        rep.bytes,
        rep.modules.len(),
        rep.modules.join(" ")
    );
    Ok(())
}
