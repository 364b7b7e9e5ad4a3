//! Choosing the kernel and its modules tree as supermin 5 does (its
//! `src/format_ext2_kernel.ml`): the `SUPERMIN_KERNEL` override, then
//! `/lib/modules/*/vmlinuz`, then `/boot`.
//!
//! Invariants: reads only below the [`Roots`] and the files the environment names;
//! writes nothing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::bzimage::bzimage_version_of;
use crate::version::compare_versions;
use crate::{Error, Given, Kernel, KernelEnv, Result, Roots, Source};

/// Choose the kernel like supermin (see the crate doc), with the real roots and the
/// process environment.
pub fn choose_host(host_cpu: &str) -> Result<Kernel> {
    choose(host_cpu, &KernelEnv::from_process(), &Roots::default())
}

/// Choose the kernel like supermin with explicit environment and roots.
pub fn choose(host_cpu: &str, env: &KernelEnv, roots: &Roots) -> Result<Kernel> {
    if let Some(k) = from_env(env, roots)? {
        return Ok(k);
    }
    if let Some(k) = from_lib_modules(roots)? {
        return Ok(k);
    }
    if let Some(k) = from_boot(host_cpu, env, roots)? {
        return Ok(k);
    }
    Err(Error::NotFound {
        host_cpu: host_cpu.to_string(),
        boot: roots.boot.clone(),
        lib_modules: roots.lib_modules.clone(),
    })
}

fn from_env(env: &KernelEnv, roots: &Roots) -> Result<Option<Kernel>> {
    let Some(kernel) = &env.kernel else {
        return Ok(None);
    };
    let path = PathBuf::from(kernel);
    // Unlike supermin 5.2.2, the file is always checked: an unusable override is an error,
    // never a silent fall-through to another kernel.
    let version = match &env.version {
        Some(v) => {
            // The version is given, so only the file itself can be at fault: no advice
            // about SUPERMIN_KERNEL_VERSION.
            fs::File::open(&path).map_err(|e| Error::BadOverride {
                path: path.clone(),
                given: env.given,
                why: "cannot open it",
                hint: env.given.pick(
                    "set SUPERMIN_KERNEL to an existing, readable kernel",
                    "give --kernel an existing, readable kernel",
                ),
                source: Some(e),
            })?;
            v.to_string_lossy().into_owned()
        }
        None => match bzimage_version_of(&path) {
            Ok(Some(v)) => v,
            Ok(None) => {
                return Err(Error::BadOverride {
                    path,
                    given: env.given,
                    why: "no kernel version found in it (not an x86 bzImage)",
                    hint: env.given.pick(
                        "set SUPERMIN_KERNEL to an x86 bzImage, or also set SUPERMIN_KERNEL_VERSION",
                        "give --kernel an x86 bzImage (a build tree's arch/x86/boot/bzImage)",
                    ),
                    source: None,
                });
            }
            Err(e) => {
                return Err(Error::BadOverride {
                    path,
                    given: env.given,
                    why: "cannot read it",
                    hint: env.given.pick(
                        "set SUPERMIN_KERNEL to an existing, readable x86 bzImage",
                        "give --kernel an existing, readable x86 bzImage",
                    ),
                    source: Some(e),
                });
            }
        },
    };
    let modules = match &env.modules {
        Some(m) => PathBuf::from(m),
        None => roots.lib_modules.join(&version),
    };
    check_modules(&modules, &path, &version, env.given)?;
    Ok(Some(Kernel {
        path,
        version,
        modules,
        source: Source::Env,
    }))
}

fn check_modules(modules: &Path, kernel: &Path, version: &str, given: Given) -> Result<()> {
    if is_regular(&modules.join("modules.dep")) {
        Ok(())
    } else {
        Err(Error::NoModules {
            path: modules.to_path_buf(),
            kernel: kernel.to_path_buf(),
            version: version.to_string(),
            given,
        })
    }
}

fn is_regular(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
}

pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::List {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::List {
            path: dir.to_path_buf(),
            source: e,
        })?;
        if let Some(n) = ent.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn from_lib_modules(roots: &Roots) -> Result<Option<Kernel>> {
    let mut cands: Vec<(String, PathBuf)> = Vec::new();
    for v in list_dir(&roots.lib_modules)? {
        let path = roots.lib_modules.join(&v).join("vmlinuz");
        if unbootable(&path.to_string_lossy(), "") {
            continue;
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() >= 10000 => cands.push((v, path)),
            _ => {}
        }
    }
    cands.sort_by(|a, b| compare_versions(&b.0, &a.0));
    let Some((version, path)) = cands.into_iter().next() else {
        return Ok(None);
    };
    // supermin does not check readability here; kiln does, so the error names the file.
    fs::File::open(&path).map_err(|e| Error::Unreadable {
        path: path.clone(),
        source: e,
    })?;
    let modules = roots.lib_modules.join(&version);
    Ok(Some(Kernel {
        path,
        version,
        modules,
        source: Source::LibModules,
    }))
}

/// `--host-cpu` → the `vmlinu?-*-M` patterns supermin 5 looks for in `/boot`.
pub fn host_cpu_patterns(host_cpu: &str) -> Vec<String> {
    let b = host_cpu.as_bytes();
    let models: Vec<&str> = match host_cpu {
        "x86_64" | "amd64" => vec!["amd64", "x86_64"],
        _ if b.len() >= 4 && b[0] == b'i' && b[2] == b'8' && b[3] == b'6' => vec!["?86"],
        _ if host_cpu.starts_with("armv7") => vec!["armmp"],
        "aarch64" => vec!["aarch64", "arm64"],
        "mips" | "mips64" => vec![host_cpu, "*-malta"],
        "ppc" | "powerpc" | "powerpc64" => vec!["ppc", "powerpc", "powerpc64"],
        "sparc" | "sparc64" => vec!["sparc", "sparc64"],
        "parisc" | "parisc64" => vec!["hppa", "hppa64"],
        "ppc64el" => vec!["powerpc64le"],
        other => vec![other],
    };
    models.iter().map(|m| format!("vmlinu?-*-{m}")).collect()
}

fn unbootable(name: &str, host_cpu: &str) -> bool {
    name.contains("xen")
        || name.contains("zfcpdump")
        || name.contains("+debug")
        || (host_cpu.starts_with("arm") && name.contains("tegra"))
}

fn from_boot(host_cpu: &str, env: &KernelEnv, roots: &Roots) -> Result<Option<Kernel>> {
    let names = list_dir(&roots.boot)?;
    let pick = |patterns: &[String]| -> Vec<String> {
        let mut v: Vec<String> = names
            .iter()
            .filter(|n| patterns.iter().any(|p| glob_match(p, n)))
            .filter(|n| !unbootable(n, host_cpu))
            .cloned()
            .collect();
        v.sort_by(|a, b| compare_versions(b, a));
        v
    };
    let mut cands = pick(&host_cpu_patterns(host_cpu));
    if cands.is_empty() {
        cands = pick(&["vmlinu?-*".to_string()]);
    }
    for name in cands {
        let path = roots.boot.join(&name);
        // An unreadable kernel is an error, not a reason to try an older one (Ubuntu
        // ships /boot/vmlinuz-* mode 0600; supermin would fall back or fail obscurely).
        let from_content = match bzimage_version_of(&path) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::Unreadable { path, source: e });
            }
            Err(_) => None,
        };
        let version = match from_content {
            Some(v) => v,
            None => {
                let Some(v) = name.get(8..).filter(|v| !v.is_empty()) else {
                    continue;
                };
                if !is_regular(&roots.lib_modules.join(v).join("modules.dep")) {
                    continue;
                }
                v.to_string()
            }
        };
        let modules = match &env.modules {
            Some(m) => PathBuf::from(m),
            None => roots.lib_modules.join(&version),
        };
        if is_regular(&modules.join("modules.dep")) {
            return Ok(Some(Kernel {
                path,
                version,
                modules,
                source: Source::Boot,
            }));
        }
    }
    Ok(None)
}

/// fnmatch(3) of a name (no `/` in it) against a supermin pattern.
pub(crate) fn glob_match(pat: &str, s: &str) -> bool {
    kiln_pattern::fnmatch(pat.as_bytes(), s.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bzimage::fake_bzimage;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn patterns_and_globs() {
        assert!(glob_match("vmlinu?-*-amd64", "vmlinuz-6.1.0-56-amd64"));
        assert!(!glob_match("vmlinu?-*-amd64", "vmlinuz-6.1.0-56-arm64"));
        assert!(glob_match("vmlinu?-*-?86", "vmlinuz-4.9-686"));
        assert_eq!(
            host_cpu_patterns("x86_64"),
            ["vmlinu?-*-amd64", "vmlinu?-*-x86_64"]
        );
        assert!(unbootable("vmlinuz-4.19-xen-amd64", "x86_64"));
    }

    pub(crate) struct Fixture {
        pub(crate) dir: tempfile::TempDir,
        pub(crate) roots: Roots,
    }

    pub(crate) fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            boot: dir.path().join("boot"),
            lib_modules: dir.path().join("lib/modules"),
        };
        fs::create_dir_all(&roots.boot).unwrap();
        fs::create_dir_all(&roots.lib_modules).unwrap();
        Fixture { dir, roots }
    }

    pub(crate) fn add_boot(fx: &Fixture, name: &str, version: &str, modules: bool) -> PathBuf {
        let p = fx.roots.boot.join(name);
        fs::write(&p, fake_bzimage(version)).unwrap();
        if modules {
            let m = fx.roots.lib_modules.join(version);
            fs::create_dir_all(&m).unwrap();
            fs::write(m.join("modules.dep"), "").unwrap();
        }
        p
    }

    #[test]
    fn boot_picks_newest_with_modules() {
        let fx = fixture();
        add_boot(&fx, "vmlinuz-6.1.0-9-amd64", "6.1.0-9-amd64", true);
        let want = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        // Newer but no modules tree: skipped as supermin does.
        add_boot(&fx, "vmlinuz-6.1.0-11-amd64", "6.1.0-11-amd64", false);
        add_boot(
            &fx,
            "vmlinuz-6.1.0-12-xen-amd64",
            "6.1.0-12-xen-amd64",
            true,
        );
        let k = choose("x86_64", &KernelEnv::default(), &fx.roots).unwrap();
        assert_eq!(k.path, want);
        assert_eq!(k.version, "6.1.0-10-amd64");
        assert_eq!(k.modules, fx.roots.lib_modules.join("6.1.0-10-amd64"));
        assert_eq!(k.source, Source::Boot);
        // --host-cpu only prioritises: another arch falls back to vmlinu?-*.
        let k = choose("aarch64", &KernelEnv::default(), &fx.roots).unwrap();
        assert_eq!(k.path, want);
    }

    #[test]
    fn lib_modules_vmlinuz_wins_over_boot() {
        let fx = fixture();
        add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        for v in ["5.14.0-1", "5.14.0-2"] {
            let d = fx.roots.lib_modules.join(v);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("vmlinuz"), fake_bzimage(v)).unwrap();
        }
        let k = choose("x86_64", &KernelEnv::default(), &fx.roots).unwrap();
        assert_eq!(k.version, "5.14.0-2");
        assert_eq!(k.source, Source::LibModules);
    }

    #[test]
    fn env_override_and_its_errors() {
        let fx = fixture();
        let other = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        let custom = fx.dir.path().join("mykernel");
        fs::write(&custom, fake_bzimage("6.1.0-10-amd64")).unwrap();
        let env = KernelEnv {
            kernel: Some(custom.clone().into()),
            ..Default::default()
        };
        let k = choose("x86_64", &env, &fx.roots).unwrap();
        assert_eq!(
            (k.path.as_path(), k.source),
            (custom.as_path(), Source::Env)
        );

        // Not a bzImage and no version given: an error naming the file, not a silent
        // fall-through to /boot.
        let junk = fx.dir.path().join("junk");
        fs::write(&junk, b"not a kernel").unwrap();
        let env = KernelEnv {
            kernel: Some(junk.clone().into()),
            ..Default::default()
        };
        let e = choose("x86_64", &env, &fx.roots).unwrap_err().to_string();
        assert!(
            e.contains(&*junk.to_string_lossy()) && e.contains("SUPERMIN_KERNEL"),
            "{e}"
        );
        // Here the version is what is missing, so setting it is the advice.
        assert!(e.contains("also set SUPERMIN_KERNEL_VERSION"), "{e}");

        let env = KernelEnv {
            kernel: Some(fx.dir.path().join("missing").into()),
            version: Some("6.1.0-10-amd64".into()),
            ..Default::default()
        };
        let e = choose("x86_64", &env, &fx.roots).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("missing"), "{msg}");
        // SUPERMIN_KERNEL_VERSION is set: advising to set it would mislead.
        assert!(!msg.contains("SUPERMIN_KERNEL_VERSION"), "{msg}");
        // The cause is the error's source, not part of its message.
        let cause = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(cause.is_some_and(|c| !msg.contains(&c)), "{msg}");

        // Version given, SUPERMIN_MODULES overrides the tree; a tree without modules.dep fails.
        let env = KernelEnv {
            kernel: Some(other.clone().into()),
            version: Some("9.9".into()),
            modules: Some(fx.dir.path().join("nomods").into()),
            ..Default::default()
        };
        let e = choose("x86_64", &env, &fx.roots).unwrap_err().to_string();
        assert!(
            e.contains("nomods") && e.contains("SUPERMIN_MODULES"),
            "{e}"
        );
    }

    /// `kiln run --kernel FILE --modules DIR`: the errors name the options the user
    /// gave, never the variables they stand for.
    #[test]
    fn option_overrides_are_named_as_options() {
        let fx = fixture();
        let junk = fx.dir.path().join("junk");
        fs::write(&junk, b"not a kernel").unwrap();
        for (kernel, why) in [
            (junk.clone(), "no kernel version found in it"),
            (fx.dir.path().join("missing"), "cannot read it"),
        ] {
            let env = KernelEnv::from_options(Some(kernel.clone()), None);
            let e = choose("x86_64", &env, &fx.roots).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--kernel {}: {why}", kernel.display())),
                "{e}"
            );
            assert!(e.contains("give --kernel"), "{e}");
            assert!(!e.contains("SUPERMIN_"), "{e}");
        }
        let real = fx.dir.path().join("real");
        fs::write(&real, fake_bzimage("6.1.0-10-amd64")).unwrap();
        let env = KernelEnv::from_options(Some(real), Some(fx.dir.path().join("nomods")));
        let e = choose("x86_64", &env, &fx.roots).unwrap_err().to_string();
        assert!(e.contains("give --modules"), "{e}");
        assert!(!e.contains("SUPERMIN_"), "{e}");
    }

    /// Root reads any file, so as root the check re-runs this test binary as `nobody`
    /// (setpriv) on a fixture with a mode-0600 kernel owned by root.
    #[test]
    fn unreadable_boot_kernel_is_an_error() {
        if let Some(dir) = std::env::var_os("KILN_TEST_UNREADABLE_FIXTURE") {
            // The unprivileged half.
            let roots = Roots {
                boot: Path::new(&dir).join("boot"),
                lib_modules: Path::new(&dir).join("lib/modules"),
            };
            let e = choose("x86_64", &KernelEnv::default(), &roots)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("vmlinuz-6.1.0-10-amd64") && e.contains("chmod"),
                "{e}"
            );
            println!("UNREADABLE-CHECKED");
            return;
        }
        let fx = fixture();
        let p = add_boot(&fx, "vmlinuz-6.1.0-10-amd64", "6.1.0-10-amd64", true);
        add_boot(&fx, "vmlinuz-6.1.0-9-amd64", "6.1.0-9-amd64", true);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let as_root = fs::File::open("/proc/self/status")
            .and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s).map(|_| s)
            })
            .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
            .unwrap_or(false);
        if !as_root {
            let e = choose("x86_64", &KernelEnv::default(), &fx.roots)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("vmlinuz-6.1.0-10-amd64") && e.contains("chmod"),
                "{e}"
            );
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args([
                "--exact",
                "choose::tests::unreadable_boot_kernel_is_an_error",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KILN_TEST_UNREADABLE_FIXTURE", fx.dir.path())
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && all.contains("UNREADABLE-CHECKED"),
            "{all}"
        );
    }

    #[test]
    fn nothing_found_message() {
        let fx = fixture();
        let e = choose("x86_64", &KernelEnv::default(), &fx.roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("failed to find a suitable kernel (host_cpu=x86_64)."),
            "{e}"
        );
    }
}
