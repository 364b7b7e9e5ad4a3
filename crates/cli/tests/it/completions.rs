//! Shell completions and manual pages generated from the command line: bash really
//! completes with the script `kiln completions bash` prints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{kiln, text};

use std::process::Command;

/// Load the bash completion script, check that it registers itself for `kiln`, then
/// complete `words` (the last one being the word under the cursor) the way bash's
/// programmable completion calls the function, and return the candidates.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = tempfile::NamedTempFile::new().unwrap();
    let o = Command::new(kiln())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(script.path(), &o.stdout).unwrap();
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = words.join(" ");
    let driver = format!(
        r#"set -e
source '{script}'
spec=$(complete -p kiln)
fn=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")
[ -n "$fn" ] || {{ echo "no completion function in: $spec" >&2; exit 1; }}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
cur=${{COMP_WORDS[COMP_CWORD]}}
prev=${{COMP_WORDS[COMP_CWORD-1]}}
"$fn" kiln "$cur" "$prev"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.path().display(),
        words = quoted.join(" "),
    );
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &driver])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands() {
    assert_eq!(bash_complete(&["kiln", "bu"]), ["build"]);
    let all = bash_complete(&["kiln", ""]);
    for w in [
        "build",
        "boot",
        "locate",
        "gc",
        "cache",
        "prepare",
        "completions",
    ] {
        assert!(all.contains(&w.to_string()), "{w} missing from {all:?}");
    }
}

#[test]
fn bash_completes_build_options() {
    let got = bash_complete(&["kiln", "build", "--"]);
    for w in [
        "--format",
        "--fixed",
        "--tar",
        "--size",
        "--include-packagelist",
        "--copy-kernel",
        "--json",
        "--help",
    ] {
        assert!(got.contains(&w.to_string()), "{w} missing from {got:?}");
    }
    // Only options: nothing that does not start with what was typed.
    assert!(got.iter().all(|w| w.starts_with("--")), "{got:?}");
    assert_eq!(bash_complete(&["kiln", "build", "--fi"]), ["--fixed"]);
    // Values of an enumerated option.
    let f = bash_complete(&["kiln", "build", "-f", ""]);
    assert!(
        f.contains(&"ext2".to_string()) && f.contains(&"chroot".to_string()),
        "{f:?}"
    );
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    for (shell, marker) in [("zsh", "#compdef kiln"), ("fish", "complete -c kiln")] {
        let o = Command::new(kiln())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let s = String::from_utf8(o.stdout).unwrap();
        assert!(s.contains(marker), "{shell}: {marker} missing");
        assert!(s.contains("build") && s.contains("--fixed"), "{shell}");
    }
    let o = Command::new(kiln())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn manpage_dir_has_one_page_per_command() {
    let d = tempfile::tempdir().unwrap();
    let o = Command::new(kiln())
        .args(["manpage", "--dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in [
        "kiln.1",
        "kiln-build.1",
        "kiln-locate.1",
        "kiln-completions.1",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    // Hidden commands get no page.
    assert!(!names.contains(&"kiln-manpage.1".to_string()), "{names:?}");
    let build = std::fs::read_to_string(d.path().join("kiln-build.1")).unwrap();
    assert!(
        build.starts_with(".ie") || build.contains(".TH kiln-build 1"),
        "{build}"
    );
    assert!(build.contains("fixed"), "{build}");
    // man renders it without warnings.
    let o = Command::new("man")
        .args(["--warnings", "-l", "-Tutf8"])
        .arg(d.path().join("kiln-build.1"))
        .env("MANWIDTH", "80")
        .output();
    if let Ok(o) = o {
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).trim().is_empty(),
            "{}",
            text(&o)
        );
    }
}
