//! `kiln build --fixed`: a libguestfs fixed appliance, as a directory (`-o DIR`), as a
//! reproducible tarball (`--tar FILE`), or both.
//!
//! The pipeline writes kernel (copied, never linked: the appliance must work on another
//! machine), initrd and root into a private directory; `README.fixed` is added and the
//! layout checked; the tarball is written from that directory; only then is `DIR`
//! published (one rename), so a failure at any step leaves neither a half-written
//! directory nor a partial tarball. Without `-o` the private directory sits beside FILE
//! (same filesystem, room for the sparse root) and is removed afterwards.

use std::path::Path;

use anyhow::Context;
use kiln_fixed::{ReadmeInfo, TarOptions};

pub fn run(
    opts: &kiln::BuildOptions,
    dir: Option<&Path>,
    tar: Option<&Path>,
) -> anyhow::Result<kiln::BuildReport> {
    // Checked before the build: a bad suffix or time should not cost a build.
    let tar_opts = match tar {
        Some(t) => Some(TarOptions::for_path(t, source_date_epoch()?)?),
        None => None,
    };
    let mut opts = opts.clone();
    opts.format = kiln::Format::Ext2;
    opts.copy_kernel = true;

    let staging = match dir {
        Some(d) => Some(kiln_outdir::Staging::new(d)?),
        None => None,
    };
    let scratch = match (&staging, tar) {
        (None, Some(t)) => {
            let parent = match t.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let name = t.file_name().unwrap_or_default().to_string_lossy();
            Some(
                tempfile::Builder::new()
                    .prefix(&format!(".{name}.kiln-build-"))
                    .tempdir_in(parent)
                    .with_context(|| {
                        format!("creating a build directory in {}", parent.display())
                    })?,
            )
        }
        _ => None,
    };
    let work = match (&staging, &scratch) {
        (Some(s), _) => s.path().to_path_buf(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => anyhow::bail!("--fixed needs -o DIR, --tar FILE or both"),
    };
    let shown = dir.or(tar).unwrap_or(&work).display().to_string();

    let report = kiln::build_into(&opts, &work).with_context(|| format!("building {shown}"))?;
    let Some(ap) = report.appliance.as_ref() else {
        anyhow::bail!("building {shown}: the pipeline wrote no ext2 appliance");
    };
    kiln_fixed::write_readme(
        &work,
        &ReadmeInfo {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_version: ap.kernel_version.clone(),
            root_uuid: ap.root_uuid.clone(),
        },
    )
    .with_context(|| format!("building {shown}"))?;
    kiln_fixed::check_layout(&work).with_context(|| format!("building {shown}"))?;
    if let (Some(t), Some(o)) = (tar, &tar_opts) {
        tracing::info!("fixed: writing the tarball {}", t.display());
        let r = kiln_fixed::write_tar(&work, t, o)
            .with_context(|| format!("writing the tarball {}", t.display()))?;
        tracing::info!(
            "fixed: {} bytes, {} bytes of content stored, sparse: {}",
            r.bytes,
            r.stored_bytes,
            r.sparse_files.join(" ")
        );
    }
    if let Some(s) = staging {
        s.publish()?;
    }
    Ok(report)
}

/// `SOURCE_DATE_EPOCH` (the reproducible-builds convention) as the tarball's time, else 0.
fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var_os("SOURCE_DATE_EPOCH") {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .with_context(|| {
                format!(
                    "SOURCE_DATE_EPOCH={}: not a number of seconds since the epoch; unset it or give one",
                    v.to_string_lossy()
                )
            }),
    }
}
