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
use kiln::fixed::{ReadmeInfo, TarOptions};

pub fn run(
    opts: &kiln::BuildOptions,
    dir: Option<&Path>,
    tar: Option<&Path>,
) -> anyhow::Result<kiln::BuildReport> {
    // Checked before the build: a bad suffix, time or destination should not cost a
    // build, and no output may be, contain or lie inside an input (or the tarball
    // inside the directory that replaces it).
    let mut outputs = Vec::new();
    if let Some(d) = dir {
        outputs.push(kiln::guard::Named::new(d, "the output"));
    }
    if let Some(t) = tar {
        outputs.push(kiln::guard::Named::new(t, "the tarball"));
    }
    kiln::guard::check(
        &outputs,
        &kiln::guard::build_inputs(&opts.inputs, &opts.sysroot),
    )?;
    if let (Some(d), Some(t)) = (dir, tar) {
        // The old DIR is removed when the new one replaces it: a tarball in it would go too.
        kiln::guard::check(
            &[kiln::guard::Named::new(t, "the tarball")],
            &[kiln::guard::Named::new(d, "the output directory")],
        )?;
    }
    let tar_opts = match tar {
        Some(t) => {
            kiln::fixed::check_destination(t)?;
            Some(TarOptions::for_path(t, source_date_epoch()?)?)
        }
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
    kiln::fixed::write_readme(
        &work,
        &ReadmeInfo {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_version: ap.kernel_version.clone(),
            root_uuid: ap.root_uuid.clone(),
        },
    )
    .with_context(|| format!("building {shown}"))?;
    kiln::fixed::check_layout(&work).with_context(|| format!("building {shown}"))?;
    if let (Some(t), Some(o)) = (tar, &tar_opts) {
        tracing::info!("fixed: writing the tarball {}", t.display());
        // The error names the tarball when writing it fails (a full filesystem), the
        // appliance file when reading one does.
        let r = kiln::fixed::write_tar(&work, t, o).with_context(|| format!("building {shown}"))?;
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

/// The latest time an entry of the tarball can carry: the largest value of the 11 octal
/// digits of a tar header's `mtime` field (2242-03-16), which every tar reader takes.
pub const MAX_TAR_TIME: u64 = 0o777_7777_7777;

/// `SOURCE_DATE_EPOCH` (the reproducible-builds convention) as the tarball's time, else 0.
fn source_date_epoch() -> anyhow::Result<u64> {
    let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") else {
        return Ok(0);
    };
    let shown = v.to_string_lossy();
    let Some(t) = v.to_str().and_then(|s| s.trim().parse::<u64>().ok()) else {
        anyhow::bail!(
            "SOURCE_DATE_EPOCH={shown}: not a number of seconds since the epoch; unset it or give one"
        );
    };
    if t > MAX_TAR_TIME {
        anyhow::bail!(
            "SOURCE_DATE_EPOCH={shown}: out of range: a tarball's times go from 0 to \
             {MAX_TAR_TIME} (2242-03-16); unset it or give a time in that range"
        );
    }
    Ok(t)
}
