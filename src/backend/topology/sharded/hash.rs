//! twemproxy's key hash functions, bit for bit (nutcracker 0.5's
//! `src/hashkit`): a key lands on the server nutcracker would pick only if
//! it hashes to the same 32 bits.
//!
//! nutcracker reads keys as C `char`, which is signed on the machines it
//! runs on: where a function widens a byte before mixing it (`fnv1_64`,
//! `fnv1a_64`, `fnv1_32`, `fnv1a_32`, `one_at_a_time`, `crc32`, `hsieh`'s
//! tail), a byte of 0x80 or more is sign-extended, as it is there.

/// One of twemproxy's hash functions (`hash:` in nutcracker.yml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyHash {
    /// `one_at_a_time`
    OneAtATime,
    /// `md5`
    Md5,
    /// `crc16`
    Crc16,
    /// `crc32` (libmemcached's: 15 bits of the CRC)
    Crc32,
    /// `crc32a` (the CRC-32 of the specification)
    Crc32a,
    /// `fnv1_64`
    Fnv1_64,
    /// `fnv1a_64`, twemproxy's default
    #[default]
    Fnv1a64,
    /// `fnv1_32`
    Fnv1_32,
    /// `fnv1a_32`
    Fnv1a32,
    /// `hsieh`
    Hsieh,
    /// `murmur`
    Murmur,
    /// `jenkins`
    Jenkins,
}

impl KeyHash {
    /// Every function, by its name in nutcracker.yml.
    pub const NAMES: [(&'static str, KeyHash); 12] = [
        ("one_at_a_time", KeyHash::OneAtATime),
        ("md5", KeyHash::Md5),
        ("crc16", KeyHash::Crc16),
        ("crc32", KeyHash::Crc32),
        ("crc32a", KeyHash::Crc32a),
        ("fnv1_64", KeyHash::Fnv1_64),
        ("fnv1a_64", KeyHash::Fnv1a64),
        ("fnv1_32", KeyHash::Fnv1_32),
        ("fnv1a_32", KeyHash::Fnv1a32),
        ("hsieh", KeyHash::Hsieh),
        ("murmur", KeyHash::Murmur),
        ("jenkins", KeyHash::Jenkins),
    ];

    /// The function's name in nutcracker.yml.
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, hash)| *hash == self)
            .map_or("fnv1a_64", |(name, _)| name)
    }

    /// The 32-bit hash of `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            KeyHash::OneAtATime => one_at_a_time(key),
            KeyHash::Md5 => md5_word(key, 0),
            KeyHash::Crc16 => crc16(key),
            KeyHash::Crc32 => crc32(key),
            KeyHash::Crc32a => crc32a(key),
            KeyHash::Fnv1_64 => fnv1_64(key),
            KeyHash::Fnv1a64 => fnv1a_64(key),
            KeyHash::Fnv1_32 => fnv1_32(key),
            KeyHash::Fnv1a32 => fnv1a_32(key),
            KeyHash::Hsieh => hsieh(key),
            KeyHash::Murmur => murmur(key),
            KeyHash::Jenkins => jenkins(key),
        }
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyHash {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, hash)| *hash)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::NAMES.iter().map(|(name, _)| *name).collect();
                format!(
                    "unknown hash `{name}`, expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// A byte as C's signed `char` widened to 32 bits.
fn signed(b: u8) -> u32 {
    i32::from(b as i8) as u32
}

fn fnv1_64(key: &[u8]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        hash ^= i64::from(b as i8) as u64;
    }
    hash as u32
}

fn fnv1a_64(key: &[u8]) -> u32 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 as u32;
    for &b in key {
        hash ^= signed(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3_u64 as u32);
    }
    hash
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut hash: u32 = 2_166_136_261;
    for &b in key {
        hash = hash.wrapping_mul(16_777_619);
        hash ^= signed(b);
    }
    hash
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut hash: u32 = 2_166_136_261;
    for &b in key {
        hash ^= signed(b);
        hash = hash.wrapping_mul(16_777_619);
    }
    hash
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut value: u32 = 0;
    for &b in key {
        value = value.wrapping_add(signed(b));
        value = value.wrapping_add(value << 10);
        value ^= value >> 6;
    }
    value = value.wrapping_add(value << 3);
    value ^= value >> 11;
    value.wrapping_add(value << 15)
}

/// CRC-16/XMODEM's table, as nutcracker's `crc16tab`.
const CRC16: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// nutcracker's crc16, whose 32-bit accumulator keeps the bits shifted past
/// 16 (they never reach the table's index, but they are in the hash).
fn crc16(key: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in key {
        let index = ((crc >> 8) ^ signed(b)) & 0xff;
        crc = (crc << 8) ^ u32::from(CRC16[index as usize]);
    }
    crc
}

/// The CRC-32 table (reflected polynomial 0xEDB88320), as `crc32tab`.
const CRC32: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc32(key: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in key {
        crc = (crc >> 8) ^ CRC32[((crc ^ signed(b)) & 0xff) as usize];
    }
    ((!crc) >> 16) & 0x7fff
}

fn crc32a(key: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in key {
        crc = CRC32[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc ^ !0u32
}

fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let get16 = |at: usize| u32::from(key[at]) | (u32::from(key[at + 1]) << 8);
    let mut hash: u32 = 0;
    let mut at = 0;
    for _ in 0..key.len() / 4 {
        hash = hash.wrapping_add(get16(at));
        let tmp = (get16(at + 2) << 11) ^ hash;
        hash = (hash << 16) ^ tmp;
        at += 4;
        hash = hash.wrapping_add(hash >> 11);
    }
    match key.len() & 3 {
        3 => {
            hash = hash.wrapping_add(get16(at));
            hash ^= hash << 16;
            hash ^= signed(key[at + 2]) << 18;
            hash = hash.wrapping_add(hash >> 11);
        }
        2 => {
            hash = hash.wrapping_add(get16(at));
            hash ^= hash << 11;
            hash = hash.wrapping_add(hash >> 17);
        }
        1 => {
            hash = hash.wrapping_add(u32::from(key[at]));
            hash ^= hash << 10;
            hash = hash.wrapping_add(hash >> 1);
        }
        _ => {}
    }
    hash ^= hash << 3;
    hash = hash.wrapping_add(hash >> 5);
    hash ^= hash << 4;
    hash = hash.wrapping_add(hash >> 17);
    hash ^= hash << 25;
    hash.wrapping_add(hash >> 6)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let length = key.len() as u32;
    let mut h = 0xdead_beef_u32.wrapping_mul(length) ^ length;
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins's lookup3 `hashlittle`, initval 13 (nutcracker's aligned and
/// unaligned paths give the same result; this is the byte path).
fn jenkins(key: &[u8]) -> u32 {
    let rot = |x: u32, k: u32| x.rotate_left(k);
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut a, mut b, mut c) = (init, init, init);
    let word = |bytes: &[u8]| {
        let mut w = [0u8; 4];
        w[..bytes.len()].copy_from_slice(bytes);
        u32::from_le_bytes(w)
    };
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        // mix(a, b, c)
        a = a.wrapping_sub(c);
        a ^= rot(c, 4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= rot(a, 6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= rot(b, 8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= rot(c, 16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= rot(a, 19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= rot(b, 4);
        b = b.wrapping_add(a);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]));
    }
    // final(a, b, c)
    c ^= b;
    c = c.wrapping_sub(rot(b, 14));
    a ^= c;
    a = a.wrapping_sub(rot(c, 11));
    b ^= a;
    b = b.wrapping_sub(rot(a, 25));
    c ^= b;
    c = c.wrapping_sub(rot(b, 16));
    a ^= c;
    a = a.wrapping_sub(rot(c, 4));
    b ^= a;
    b = b.wrapping_sub(rot(a, 14));
    c ^= b;
    c.wrapping_sub(rot(b, 24))
}

/// Four bytes of the MD5 of `key`, little-endian, from `4 × word` on: the
/// `md5` hash (word 0) and ketama's points (words 0 to 3).
pub(super) fn md5_word(key: &[u8], word: usize) -> u32 {
    let digest = md5(key);
    let at = 4 * word;
    u32::from_le_bytes([digest[at], digest[at + 1], digest[at + 2], digest[at + 3]])
}

/// MD5 (RFC 1321).
fn md5(message: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: [u32; 64] =
        std::array::from_fn(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32);
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut data = message.to_vec();
    data.push(0x80);
    while data.len() % 64 != 56 {
        data.push(0);
    }
    data.extend_from_slice(&((message.len() as u64).wrapping_mul(8)).to_le_bytes());
    for block in data.chunks_exact(64) {
        let m: [u32; 16] = std::array::from_fn(|i| {
            u32::from_le_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ])
        });
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (word, add) in state.iter_mut().zip([a, b, c, d]) {
            *word = word.wrapping_add(add);
        }
    }
    let mut digest = [0u8; 16];
    for (i, word) in state.iter().enumerate() {
        digest[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_is_rfc_1321() {
        let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        let long =
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(hex(md5(long)), "57edf4a22be3c955ac49da2e2107b67a");
    }

    #[test]
    fn the_crcs_are_the_standard_ones() {
        // CRC-32 of "123456789" is 0xCBF43926; CRC-16/XMODEM's 0x31C3.
        assert_eq!(crc32a(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc16(b"123456789") & 0xffff, 0x31c3);
        assert_eq!(crc32(b"123456789"), (0xcbf4_3926 >> 16) & 0x7fff);
    }

    #[test]
    fn every_name_parses_to_itself() {
        for (name, hash) in KeyHash::NAMES {
            assert_eq!(name.parse::<KeyHash>().unwrap(), hash);
            assert_eq!(hash.to_string(), name);
        }
        assert!("sha1".parse::<KeyHash>().is_err());
    }
}
