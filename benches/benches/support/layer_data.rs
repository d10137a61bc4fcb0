//! A deterministic, layer-like tar for the codec benchmarks (shared by `benches/codecs.rs`
//! and `examples/codec.rs`, so criterion and the command-line comparison see the same bytes).
//!
//! The mix imitates a distribution image layer: ~45% source/text files (words and
//! identifiers, gzip ≈ 4:1), ~40% executable-like binary (short opcodes with random operands
//! and small-integer tables, gzip ≈ 2:1) and ~15% already-compressed data (random bytes, as
//! `.gz`/`.png` files in images are). File sizes run from 1 KiB to 4 MiB, most small.

/// xorshift64: deterministic and fast; quality is irrelevant here.
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const WORDS: &[&str] = &[
    "fn", "let", "mut", "return", "if", "else", "for", "while", "match", "struct", "impl", "pub",
    "self", "config", "buffer", "len", "error", "result", "value", "index", "node", "request",
    "response", "digest", "layer", "manifest", "the", "a", "of", "to", "and", "in", "is", "=",
    "==", "{", "}", "(", ")", ";", "->", "//", "#include", "int", "char", "void", "static",
    "const", "size_t", "NULL", "0", "1", "-1", "true", "false", "import", "def",
];

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut indent = 0u64;
    while out.len() < len {
        for _ in 0..indent {
            out.extend_from_slice(b"    ");
        }
        for _ in 0..3 + rng.below(9) {
            if rng.below(5) == 0 {
                // An identifier or number nobody else uses: the incompressible part of text.
                out.extend_from_slice(format!("v{:x} ", rng.below(1 << 20)).as_bytes());
            } else {
                out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
                out.push(b' ');
            }
        }
        out.push(b'\n');
        indent = (indent + rng.below(3)).saturating_sub(1).min(4);
    }
    out.truncate(len);
    out
}

fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    const OPCODES: &[&[u8]] = &[
        &[0x48, 0x89],
        &[0x48, 0x8b],
        &[0xe8],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0xc3],
        &[0x55],
        &[0x41, 0x57],
        &[0x48, 0x83, 0xc4],
        &[0x74],
        &[0x75],
        &[0xff, 0x15],
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        if rng.below(8) == 0 {
            // A table of small integers (relocations, string offsets).
            let base = rng.below(1 << 16) as u32;
            for i in 0..16u32 {
                out.extend_from_slice(&(base + i * 8).to_le_bytes());
            }
        } else {
            out.extend_from_slice(OPCODES[rng.below(OPCODES.len() as u64) as usize]);
            let operand = rng.next_u64().to_le_bytes();
            out.extend_from_slice(&operand[..rng.below(5) as usize]);
        }
    }
    out.truncate(len);
    out
}

fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar of about `size` bytes (the seed fixes the content).
pub fn layer_tar(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut b = tar::Builder::new(Vec::with_capacity(size + (1 << 20)));
    let mut written = 0usize;
    let mut i = 0u32;
    while written < size {
        let len = match rng.below(10) {
            0 => 1 << 20 | rng.below(3 << 20) as usize,
            1..=3 => 64 << 10 | rng.below(192 << 10) as usize,
            _ => 1 << 10 | rng.below(32 << 10) as usize,
        }
        .min(size - written);
        let (dir, data) = match rng.below(20) {
            0..=8 => ("usr/share/doc", text(&mut rng, len)),
            9..=16 => ("usr/lib", binary(&mut rng, len)),
            _ => ("usr/share/assets", random(&mut rng, len)),
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        let path = format!("{dir}/f{i:06}");
        b.append_data(&mut h, path, data.as_slice())
            .expect("appending to a Vec cannot fail");
        written += len + 512;
        i += 1;
    }
    b.into_inner().expect("finishing a Vec tar cannot fail")
}
