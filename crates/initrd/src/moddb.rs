//! A kernel's module database as the initrd builder needs it: modules.dep (which module
//! needs which), modules.softdep (`pre:`/`post:` soft dependencies) and modules.alias
//! (exact aliases, through which softdeps name modules; every alias of a module, the
//! device patterns included, for gating drivers on the VM's devices), and the
//! dependency-ordered closure of a set of modules.
//!
//! Invariants: the files are parsed leniently, as modprobe does (malformed lines are
//! skipped, never fatal); module names compare with `-` and `_` equal; the closure
//! lists every module after its hard dependencies and `pre:` softdeps, deterministically
//! (keys sorted), and terminates on cyclic input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::Path;

use crate::{Error, Result};

pub(crate) fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name from a modules.dep key: basename without `.ko[.xz|.zst|.gz]`.
pub fn module_name(key: &str) -> String {
    let base = key.rsplit('/').next().unwrap_or(key);
    let base = base.split(".ko").next().unwrap_or(base);
    norm(base)
}

/// modules.dep: KEY → deps (paths relative to the modules tree). Lines without `:` are
/// skipped (supermin 5.3+ behaviour).
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// modules.softdep: module name → (pre, post) names (possibly aliases).
pub fn parse_softdeps(text: &str) -> HashMap<String, (Vec<String>, Vec<String>)> {
    let mut out: HashMap<String, (Vec<String>, Vec<String>)> = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("softdep") {
            continue;
        }
        let Some(m) = w.next() else { continue };
        let e = out.entry(norm(m)).or_default();
        let mut post = false;
        for t in w {
            match t {
                "pre:" => post = false,
                "post:" => post = true,
                n if post => e.1.push(n.to_string()),
                n => e.0.push(n.to_string()),
            }
        }
    }
    out
}

/// modules.alias, exact (non-glob) aliases only: alias → module names.
pub fn parse_aliases(text: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("alias") {
            continue;
        }
        if let (Some(a), Some(m)) = (w.next(), w.next())
            && !a.contains(['*', '?', '['])
        {
            out.entry(a.to_string()).or_default().push(norm(m));
        }
    }
    out
}

/// modules.alias, every alias (glob patterns included): module name → its aliases, in
/// file order.
pub fn parse_module_aliases(text: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("alias") {
            continue;
        }
        if let (Some(a), Some(m)) = (w.next(), w.next()) {
            out.entry(norm(m)).or_default().push(a.to_string());
        }
    }
    out
}

/// The parsed module metadata of one kernel.
#[derive(Debug, Default)]
pub struct ModuleDb {
    pub deps: BTreeMap<String, Vec<String>>,
    pub softdeps: HashMap<String, (Vec<String>, Vec<String>)>,
    /// Exact aliases: alias → module names.
    pub aliases: HashMap<String, Vec<String>>,
    /// Every alias of each module: module name → aliases.
    pub module_aliases: HashMap<String, Vec<String>>,
    by_name: HashMap<String, String>,
}

impl ModuleDb {
    pub fn new(dep: &str, softdep: &str, alias: &str) -> Self {
        let deps = parse_modules_dep(dep);
        let by_name = deps.keys().map(|k| (module_name(k), k.clone())).collect();
        ModuleDb {
            deps,
            softdeps: parse_softdeps(softdep),
            aliases: parse_aliases(alias),
            module_aliases: parse_module_aliases(alias),
            by_name,
        }
    }

    /// Read modules.dep (required), modules.softdep and modules.alias (optional).
    pub fn load(modules_dir: &Path) -> Result<Self> {
        let read = |n: &str, required: bool| -> Result<String> {
            let p = modules_dir.join(n);
            match fs::read_to_string(&p) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(Error::Read { path: p, source: e }),
            }
        };
        Ok(Self::new(
            &read("modules.dep", true)?,
            &read("modules.softdep", false)?,
            &read("modules.alias", false)?,
        ))
    }

    /// modules.dep keys for a module name or alias.
    fn resolve(&self, name: &str) -> Vec<String> {
        if let Some(k) = self.by_name.get(&norm(name)) {
            return vec![k.clone()];
        }
        let mut v: Vec<String> = self
            .aliases
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|m| self.by_name.get(m).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Keys that must be loaded before `key`: its hard dependencies and its `pre:`
    /// softdeps (sorted, deduplicated).
    pub fn before(&self, key: &str) -> Vec<String> {
        let mut v: Vec<String> = self.deps.get(key).cloned().unwrap_or_default();
        if let Some((pre, _)) = self.softdeps.get(&module_name(key)) {
            v.extend(pre.iter().flat_map(|p| self.resolve(p)));
        }
        v.retain(|k| k != key);
        v.sort();
        v.dedup();
        v
    }

    /// Keys `key` wants loaded after it: its `post:` softdeps (sorted, deduplicated).
    pub fn after(&self, key: &str) -> Vec<String> {
        let mut v: Vec<String> = match self.softdeps.get(&module_name(key)) {
            Some((_, post)) => post.iter().flat_map(|p| self.resolve(p)).collect(),
            None => Vec::new(),
        };
        v.retain(|k| k != key);
        v.sort();
        v.dedup();
        v
    }

    /// Dependency-ordered closure of `roots` (names or aliases; unknown names, e.g.
    /// built-in modules, are skipped): depth-first post-order, softdep `pre:` modules and
    /// hard deps before a module, `post:` modules after it.
    pub fn closure(&self, roots: &[&str]) -> Vec<String> {
        self.closure_keys(roots.iter().flat_map(|r| self.resolve(r)).collect())
    }

    /// [`ModuleDb::closure`] of modules.dep keys.
    pub fn closure_keys(&self, mut keys: Vec<String>) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        keys.sort();
        keys.dedup();
        for k in keys {
            self.visit(&k, &mut seen, &mut out);
        }
        out
    }

    fn visit(&self, key: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(key.to_string()) {
            return;
        }
        let name = module_name(key);
        let soft = self.softdeps.get(&name);
        if let Some((pre, _)) = soft {
            for p in pre {
                for k in self.resolve(p) {
                    self.visit(&k, seen, out);
                }
            }
        }
        if let Some(deps) = self.deps.get(key) {
            let mut deps = deps.clone();
            deps.sort();
            for d in deps {
                self.visit(&d, seen, out);
            }
        }
        out.push(key.to_string());
        if let Some((_, post)) = soft {
            for p in post {
                for k in self.resolve(p) {
                    self.visit(&k, seen, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko
broken line without colon
";
    const SOFT: &str = "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\nsoftdep virtio_blk post: crc16\n";
    const ALIAS: &str = "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00001AF4d* virtio_pci\n";

    #[test]
    fn closure_with_softdeps_in_dependency_order() {
        let db = ModuleDb::new(DEP, SOFT, ALIAS);
        let got: Vec<String> = db
            .closure(&["ext4", "virtio-blk", "no_such_module"])
            .iter()
            .map(|k| module_name(k))
            .collect();
        assert_eq!(
            got,
            [
                "virtio",
                "virtio_ring",
                "virtio_blk",
                "crc16", // virtio_blk's post softdep (made up for the test)
                "crc32c_intel",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "ext4",
            ]
        );
        // Every module comes after all its hard deps and pre-softdeps.
        let pos = |n: &str| got.iter().position(|g| g == n).unwrap();
        assert!(pos("crc32c_generic") < pos("ext4") && pos("jbd2") < pos("ext4"));
        assert!(!got.contains(&"virtio_net".to_string()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4096))]

        /// Any modules.dep / softdep / alias text parses, and the closure of any name
        /// terminates (cycles included) with every key at most once.
        #[test]
        fn module_database_never_panics(
            dep in "([a-z_/.-]{0,12}(:( [a-z_/.-]{0,12}){0,3})?\n){0,12}",
            soft in "(softdep [a-z_-]{0,8}( (pre:|post:|[a-z_-]{0,8})){0,4}\n){0,6}",
            alias in "(alias [a-z*?_-]{0,8} [a-z_-]{0,8}\n){0,6}",
            junk in ".{0,64}",
        ) {
            let db = ModuleDb::new(&(dep.clone() + &junk), &(soft + &junk), &(alias + &junk));
            let keys: Vec<String> = db.deps.keys().cloned().collect();
            let out = db.closure_keys(keys);
            let mut uniq = out.clone();
            uniq.sort();
            uniq.dedup();
            proptest::prop_assert_eq!(uniq.len(), out.len());
            let _ = db.closure(&["ext4", "crypto-crc32c", ""]);
        }
    }
}
