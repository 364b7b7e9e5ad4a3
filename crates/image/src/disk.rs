//! ext2's on-disk records as named-field structs, each serialised in one place: the
//! superblock, the group descriptor and the inode. Every field is written in on-disk
//! order by a little-endian cursor; fields kiln leaves zero are skipped by name. The
//! buffers handed to the `encode` functions are zeroed, so skipped bytes stay zero.
//!
//! Field names follow `struct ext2_super_block`, `struct ext2_group_desc` and
//! `struct ext2_inode_large` of e2fsprogs (without their `s_`, `bg_`, `i_` prefixes).

/// A little-endian writer over a zeroed buffer.
struct Le<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> Le<'b> {
    fn new(buf: &'b mut [u8]) -> Self {
        Le { buf, pos: 0 }
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf[self.pos..self.pos + v.len()].copy_from_slice(v);
        self.pos += v.len();
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// Leave `n` bytes of fields kiln does not use at zero.
    fn zero(&mut self, n: usize) -> &mut Self {
        self.pos += n;
        self
    }
}

/// Size of the superblock record (it starts at byte 1024 of the image).
pub const SUPERBLOCK_SIZE: usize = 1024;
/// Size of one group descriptor (no `64bit` feature).
pub const GROUP_DESC_SIZE: usize = 32;

pub const EXT2_MAGIC: u16 = 0xef53;
/// `s_state`: cleanly unmounted.
pub const STATE_CLEAN: u16 = 1;
/// `s_errors`: continue on errors.
pub const ERRORS_CONTINUE: u16 = 1;
/// `s_rev_level`: dynamic inode sizes and feature flags.
pub const DYNAMIC_REV: u32 = 1;
pub const COMPAT_EXT_ATTR: u32 = 0x0008;
pub const INCOMPAT_FILETYPE: u32 = 0x0002;
pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
pub const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
/// `s_def_hash_version`: half MD4.
pub const HASH_HALF_MD4: u8 = 1;
pub const DEFM_XATTR_USER: u32 = 0x0004;
pub const DEFM_ACL: u32 = 0x0008;
/// `s_flags`: directory hashes use signed `char` (as on x86).
pub const FLAGS_SIGNED_HASH: u32 = 0x0001;

/// The superblock (`struct ext2_super_block`), the fields of a revision-1 ext2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u32,
    pub r_blocks_count: u32,
    pub free_blocks_count: u32,
    pub free_inodes_count: u32,
    pub first_data_block: u32,
    /// log2(block size) - 10.
    pub log_block_size: u32,
    pub log_frag_size: u32,
    pub blocks_per_group: u32,
    pub frags_per_group: u32,
    pub inodes_per_group: u32,
    pub mtime: u32,
    pub wtime: u32,
    pub mnt_count: u16,
    /// `0xffff` (-1): no forced check.
    pub max_mnt_count: u16,
    pub magic: u16,
    pub state: u16,
    pub errors: u16,
    pub minor_rev_level: u16,
    pub lastcheck: u32,
    pub checkinterval: u32,
    pub creator_os: u32,
    pub rev_level: u32,
    pub def_resuid: u16,
    pub def_resgid: u16,
    pub first_ino: u32,
    pub inode_size: u16,
    /// The group this copy of the superblock sits in.
    pub block_group_nr: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    /// The directory hash seed (`s_hash_seed`, four words, stored as given).
    pub hash_seed: [u8; 16],
    pub def_hash_version: u8,
    pub default_mount_opts: u32,
    pub mkfs_time: u32,
    pub min_extra_isize: u16,
    pub want_extra_isize: u16,
    pub flags: u32,
}

impl Superblock {
    /// The 1024-byte record.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = vec![0u8; SUPERBLOCK_SIZE];
        Le::new(&mut s)
            .u32(self.inodes_count)
            .u32(self.blocks_count)
            .u32(self.r_blocks_count)
            .u32(self.free_blocks_count)
            .u32(self.free_inodes_count)
            .u32(self.first_data_block)
            .u32(self.log_block_size)
            .u32(self.log_frag_size)
            .u32(self.blocks_per_group)
            .u32(self.frags_per_group)
            .u32(self.inodes_per_group)
            .u32(self.mtime)
            .u32(self.wtime)
            .u16(self.mnt_count)
            .u16(self.max_mnt_count)
            .u16(self.magic)
            .u16(self.state)
            .u16(self.errors)
            .u16(self.minor_rev_level)
            .u32(self.lastcheck)
            .u32(self.checkinterval)
            .u32(self.creator_os)
            .u32(self.rev_level)
            .u16(self.def_resuid)
            .u16(self.def_resgid)
            .u32(self.first_ino)
            .u16(self.inode_size)
            .u16(self.block_group_nr)
            .u32(self.feature_compat)
            .u32(self.feature_incompat)
            .u32(self.feature_ro_compat)
            .bytes(&self.uuid)
            // volume_name, last_mounted, algorithm_usage_bitmap, prealloc_blocks,
            // prealloc_dir_blocks, reserved_gdt_blocks, journal_uuid, journal_inum,
            // journal_dev, last_orphan
            .zero(16 + 64 + 4 + 1 + 1 + 2 + 16 + 4 + 4 + 4)
            .bytes(&self.hash_seed)
            .u8(self.def_hash_version)
            // jnl_backup_type, desc_size
            .zero(1 + 2)
            .u32(self.default_mount_opts)
            // first_meta_bg
            .zero(4)
            .u32(self.mkfs_time)
            // jnl_blocks[17], blocks_count_hi, r_blocks_count_hi, free_blocks_count_hi
            .zero(17 * 4 + 4 + 4 + 4)
            .u16(self.min_extra_isize)
            .u16(self.want_extra_isize)
            .u32(self.flags);
        s
    }
}

/// A block group descriptor (`struct ext2_group_desc`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupDesc {
    pub block_bitmap: u32,
    pub inode_bitmap: u32,
    pub inode_table: u32,
    pub free_blocks_count: u16,
    pub free_inodes_count: u16,
    pub used_dirs_count: u16,
}

impl GroupDesc {
    /// Write the 32-byte record into `b` (zeroed, at least [`GROUP_DESC_SIZE`] long).
    pub fn encode(&self, b: &mut [u8]) {
        Le::new(&mut b[..GROUP_DESC_SIZE])
            .u32(self.block_bitmap)
            .u32(self.inode_bitmap)
            .u32(self.inode_table)
            .u16(self.free_blocks_count)
            .u16(self.free_inodes_count)
            .u16(self.used_dirs_count);
    }
}

/// A time as ext4 stores it: the low 32 bits of the seconds, and an "extra" word
/// holding the epoch bits (seconds >> 32, two of them) and nanoseconds << 2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Time {
    pub sec: u32,
    pub extra: u32,
}

impl Time {
    pub fn new(sec: i64, nsec: u32) -> Time {
        let sec = sec.clamp(-(1i64 << 31), (1i64 << 34) - (1i64 << 31) - 1);
        let lo = sec as i32;
        let epoch = ((sec - i64::from(lo)) >> 32) as u32 & 3;
        Time {
            sec: lo as u32,
            extra: epoch | (nsec.min(999_999_999) << 2),
        }
    }
}

/// What an inode's 60-byte `i_block` area holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IBlock<'a> {
    #[default]
    Empty,
    /// 12 direct, one indirect, one double and one triple indirect block pointer.
    Pointers([u32; 15]),
    /// A fast symlink's target (under 60 bytes).
    Inline(&'a [u8]),
    /// A device number: the old 16-bit encoding in the first word when major and minor
    /// are under 256, else the new encoding in the second word, as the kernel does.
    Device { major: u32, minor: u32 },
}

/// An inode (`struct ext2_inode_large`, 256 bytes with `extra_isize` 32).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inode<'a> {
    pub mode: u16,
    /// 32 bits, split into the low word and `l_i_uid_high`.
    pub uid: u32,
    /// 64 bits, split into `i_size` and `i_size_high`.
    pub size: u64,
    pub atime: Time,
    pub ctime: Time,
    pub mtime: Time,
    pub crtime: Time,
    /// 32 bits, split into the low word and `l_i_gid_high`.
    pub gid: u32,
    pub links_count: u16,
    /// In 512-byte units.
    pub blocks: u32,
    pub block: IBlock<'a>,
    pub file_acl: u32,
    pub extra_isize: u16,
}

impl Inode<'_> {
    /// Write the inode into `b` (zeroed, at least 160 bytes: the in-inode attribute
    /// area after it is the caller's).
    pub fn encode(&self, b: &mut [u8]) {
        let mut i_block = [0u8; 60];
        match self.block {
            IBlock::Empty => {}
            IBlock::Pointers(p) => {
                for (i, v) in p.iter().enumerate() {
                    i_block[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            IBlock::Inline(t) => i_block[..t.len()].copy_from_slice(t),
            IBlock::Device { major, minor } => {
                if major < 256 && minor < 256 {
                    i_block[0..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
                } else {
                    let new = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
                    i_block[4..8].copy_from_slice(&new.to_le_bytes());
                }
            }
        }
        Le::new(b)
            .u16(self.mode)
            .u16(self.uid as u16)
            .u32(self.size as u32)
            .u32(self.atime.sec)
            .u32(self.ctime.sec)
            .u32(self.mtime.sec)
            // dtime
            .zero(4)
            .u16(self.gid as u16)
            .u16(self.links_count)
            .u32(self.blocks)
            // flags, osd1
            .zero(4 + 4)
            .bytes(&i_block)
            // generation
            .zero(4)
            .u32(self.file_acl)
            .u32((self.size >> 32) as u32)
            // faddr, l_i_blocks_high, l_i_file_acl_high
            .zero(4 + 2 + 2)
            .u16((self.uid >> 16) as u16)
            .u16((self.gid >> 16) as u16)
            // l_i_checksum_lo, l_i_reserved
            .zero(2 + 2)
            .u16(self.extra_isize)
            // checksum_hi
            .zero(2)
            .u32(self.ctime.extra)
            .u32(self.mtime.extra)
            .u32(self.atime.extra)
            .u32(self.crtime.sec)
            .u32(self.crtime.extra);
    }
}

/// `dev_t` as made by glibc's `makedev` into (major, minor).
pub fn split_dev(d: u64) -> (u32, u32) {
    let major = ((d >> 8) & 0xfff) | ((d >> 32) & !0xfff);
    let minor = (d & 0xff) | ((d >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(b: &[u8], off: usize, n: usize) -> &[u8] {
        &b[off..off + n]
    }

    /// The field offsets of e2fsprogs' `ext2_fs.h`, for the fields kiln writes.
    #[test]
    fn superblock_fields_land_at_their_offsets() {
        let sb = Superblock {
            inodes_count: 1,
            free_inodes_count: 2,
            inodes_per_group: 3,
            magic: EXT2_MAGIC,
            lastcheck: 4,
            first_ino: 11,
            block_group_nr: 5,
            feature_compat: 6,
            uuid: [7; 16],
            hash_seed: [8; 16],
            def_hash_version: 9,
            default_mount_opts: 10,
            mkfs_time: 12,
            min_extra_isize: 13,
            want_extra_isize: 14,
            flags: 15,
            ..Superblock::default()
        };
        let s = sb.encode();
        assert_eq!(s.len(), 1024);
        assert_eq!(at(&s, 0, 4), 1u32.to_le_bytes());
        assert_eq!(at(&s, 16, 4), 2u32.to_le_bytes());
        assert_eq!(at(&s, 40, 4), 3u32.to_le_bytes());
        assert_eq!(at(&s, 56, 2), [0x53, 0xef]);
        assert_eq!(at(&s, 64, 4), 4u32.to_le_bytes());
        assert_eq!(at(&s, 84, 4), 11u32.to_le_bytes());
        assert_eq!(at(&s, 90, 2), 5u16.to_le_bytes());
        assert_eq!(at(&s, 92, 4), 6u32.to_le_bytes());
        assert_eq!(at(&s, 104, 16), [7; 16]);
        assert_eq!(at(&s, 236, 16), [8; 16]);
        assert_eq!(s[252], 9);
        assert_eq!(at(&s, 256, 4), 10u32.to_le_bytes());
        assert_eq!(at(&s, 264, 4), 12u32.to_le_bytes());
        assert_eq!(at(&s, 348, 2), 13u16.to_le_bytes());
        assert_eq!(at(&s, 350, 2), 14u16.to_le_bytes());
        assert_eq!(at(&s, 352, 4), 15u32.to_le_bytes());
        assert!(s[356..].iter().all(|&b| b == 0));
        // Where libguestfs and the crate's readers look, relative to byte 1024.
        assert_eq!(crate::MAGIC_OFFSET - 1024, 56);
        assert_eq!(crate::UUID_OFFSET - 1024, 104);
    }

    #[test]
    fn inode_fields_land_at_their_offsets() {
        let t = Time { sec: 3, extra: 4 };
        let ino = Inode {
            mode: 0o100644,
            uid: 0x0001_0002,
            size: 0x5_0000_0006,
            atime: t,
            ctime: t,
            mtime: t,
            crtime: t,
            gid: 0x0007_0008,
            links_count: 9,
            blocks: 10,
            block: IBlock::Pointers([11; 15]),
            file_acl: 12,
            extra_isize: 32,
        };
        let mut b = [0u8; 256];
        ino.encode(&mut b);
        assert_eq!(at(&b, 0, 2), 0o100644u16.to_le_bytes());
        assert_eq!(at(&b, 2, 2), 2u16.to_le_bytes());
        assert_eq!(at(&b, 4, 4), 6u32.to_le_bytes());
        for off in [8, 12, 16, 144] {
            assert_eq!(at(&b, off, 4), 3u32.to_le_bytes(), "time at {off}");
        }
        for off in [132, 136, 140, 148] {
            assert_eq!(at(&b, off, 4), 4u32.to_le_bytes(), "extra at {off}");
        }
        assert_eq!(at(&b, 20, 4), [0; 4]);
        assert_eq!(at(&b, 24, 2), 8u16.to_le_bytes());
        assert_eq!(at(&b, 26, 2), 9u16.to_le_bytes());
        assert_eq!(at(&b, 28, 4), 10u32.to_le_bytes());
        assert_eq!(at(&b, 40, 4), 11u32.to_le_bytes());
        assert_eq!(at(&b, 96, 4), 11u32.to_le_bytes());
        assert_eq!(at(&b, 104, 4), 12u32.to_le_bytes());
        assert_eq!(at(&b, 108, 4), 5u32.to_le_bytes());
        assert_eq!(at(&b, 120, 2), 1u16.to_le_bytes());
        assert_eq!(at(&b, 122, 2), 7u16.to_le_bytes());
        assert_eq!(at(&b, 128, 2), 32u16.to_le_bytes());
        assert!(b[152..].iter().all(|&x| x == 0));
    }

    #[test]
    fn devices_use_the_kernels_two_encodings() {
        let enc = |major, minor| {
            let mut b = [0u8; 256];
            Inode {
                block: IBlock::Device { major, minor },
                ..Inode::default()
            }
            .encode(&mut b);
            (
                u32::from_le_bytes(b[40..44].try_into().unwrap_or_default()),
                u32::from_le_bytes(b[44..48].try_into().unwrap_or_default()),
            )
        };
        assert_eq!(enc(1, 3), (0x0103, 0));
        assert_eq!(
            enc(300, 70000),
            (0, (70000 & 0xff) | (300 << 8) | ((70000 & !0xff) << 12))
        );
    }

    #[test]
    fn group_descriptor_layout() {
        let mut b = [0u8; 32];
        GroupDesc {
            block_bitmap: 1,
            inode_bitmap: 2,
            inode_table: 3,
            free_blocks_count: 4,
            free_inodes_count: 5,
            used_dirs_count: 6,
        }
        .encode(&mut b);
        assert_eq!(
            b[..18],
            [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 5, 0, 6, 0]
        );
        assert!(b[18..].iter().all(|&x| x == 0));
    }

    #[test]
    fn times_and_devices() {
        assert_eq!(
            Time::new(5, 7),
            Time {
                sec: 5,
                extra: 7 << 2
            }
        );
        assert_eq!(
            Time::new(-1, 0),
            Time {
                sec: u32::MAX,
                extra: 0
            }
        );
        // 2040: past 2^31, epoch bit 1.
        let t = 2_208_988_800i64;
        assert_eq!(
            Time::new(t, 0),
            Time {
                sec: (t - (1 << 32)) as i32 as u32,
                extra: 1
            }
        );
        assert_eq!(split_dev(libc_makedev(1, 3)), (1, 3));
        assert_eq!(split_dev(libc_makedev(300, 70000)), (300, 70000));
    }

    fn libc_makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xfffff000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffffff00) << 12)
            | (minor & 0xff)
    }
}
