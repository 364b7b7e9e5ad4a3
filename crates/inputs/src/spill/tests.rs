#![allow(clippy::unwrap_used)]

use super::*;
use std::os::unix::fs::MetadataExt;

fn spill() -> (tempfile::TempDir, Arc<Spill>) {
    let t = tempfile::tempdir().unwrap();
    let s = Spill::new_in(t.path()).unwrap();
    (t, s)
}

/// Bytes with a zero block in the middle and a partial last block.
fn sample() -> Vec<u8> {
    let mut v = vec![7u8; 3 * BLOCK as usize + 100];
    v[BLOCK as usize..2 * BLOCK as usize].fill(0);
    v
}

#[test]
fn regions_hold_their_bytes_and_skip_zero_blocks() {
    let (t, s) = spill();
    let a = s.append(&mut &sample()[..]).unwrap();
    let b = s.append(&mut &b"second"[..]).unwrap();
    let e = s.append(&mut io::empty()).unwrap();
    assert_eq!(a.to_vec().unwrap(), sample());
    assert_eq!(b.to_vec().unwrap(), b"second");
    assert!(e.is_empty() && e.to_vec().unwrap().is_empty());
    assert_eq!(a.data_blocks().unwrap(), [(0, 1), (2, 2)]);
    assert_eq!(b.data_blocks().unwrap(), [(0, 1)]);
    assert_eq!(b.offset() % BLOCK, 0);
    assert!(b.offset() >= a.offset() + a.len());
    assert_eq!(a.hash(), *blake3::hash(&sample()).as_bytes());
    // Equal content, equal regions, wherever they are.
    assert_eq!(s.append(&mut &b"second"[..]).unwrap(), b);
    assert_ne!(a, b);
    // Nothing named in the directory.
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}

#[test]
fn zeros_take_no_disk_space_and_no_memory() {
    let (_t, s) = spill();
    let len = 256u64 << 20;
    let r = s.append(&mut io::repeat(0).take(len)).unwrap();
    assert_eq!(r.len(), len);
    assert!(r.data_blocks().unwrap().is_empty());
    assert_eq!(s.file().metadata().unwrap().len(), len);
    assert!(s.file().metadata().unwrap().blocks() * 512 < 1 << 20);
    let mut h = blake3::Hasher::new();
    h.update_reader(io::repeat(0).take(len)).unwrap();
    assert_eq!(r.hash(), *h.finalize().as_bytes());
    let mut tail = [1u8; 10];
    assert_eq!(r.read_at(&mut tail, len - 4).unwrap(), 4);
    assert_eq!(tail[..4], [0; 4]);
}

/// A stream that fails after some bytes.
struct Failing(usize);
impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::other("cut"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(9);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn a_failed_stream_leaves_the_next_region_clean() {
    let (_t, s) = spill();
    let e = s.append(&mut Failing(3 * CHUNK)).unwrap_err();
    assert!(matches!(e, AppendError::Read(_)), "{e:?}");
    // Zeros where the failed stream wrote nines: still zeros.
    let r = s.append(&mut io::repeat(0).take(CHUNK as u64)).unwrap();
    assert_eq!(r.to_vec().unwrap(), vec![0u8; CHUNK]);
}

#[test]
fn copy_to_keeps_holes() {
    let (t, s) = spill();
    s.append(&mut &b"before"[..]).unwrap();
    let mut data = vec![0u8; 8 << 20];
    data[5 << 20] = 1;
    let r = s.append(&mut &data[..]).unwrap();
    let out = tempfile::tempfile_in(t.path()).unwrap();
    r.copy_to(&out).unwrap();
    let md = out.metadata().unwrap();
    assert_eq!(md.len(), data.len() as u64);
    assert!(md.blocks() * 512 <= 1 << 20, "{} blocks", md.blocks());
    let mut back = vec![0u8; data.len()];
    out.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data);
}
