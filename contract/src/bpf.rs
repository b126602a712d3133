//! The form of a compiled seccomp program between the processes that handle it: an array of
//! classic-BPF instructions (`struct sock_filter`), 8 bytes each in the machine's byte order.
//! The shim compiles and writes programs (`airlock-policies`); `airlock-runtime` and the
//! microVM guest's agent read them and install them.

/// The most instructions a program may have (the kernel's `BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// The program's bytes.
pub fn encode<'a>(program: impl IntoIterator<Item = &'a libc::sock_filter>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in program {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// Reads a program, checking only its shape (the kernel verifies the program itself when it
/// is installed).
pub fn decode(bytes: &[u8]) -> Result<Vec<libc::sock_filter>, String> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) || bytes.len() / 8 > MAX_INSTRUCTIONS {
        return Err(format!(
            "{} bytes is not a program of 1 to {MAX_INSTRUCTIONS} 8-byte instructions",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_survives_its_bytes_and_bad_shapes_are_refused() {
        let prog = [
            libc::sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 4,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 1,
                jf: 2,
                k: 0x7fff_0000,
            },
        ];
        let bytes = encode(&prog);
        assert_eq!(bytes.len(), 16);
        let back = decode(&bytes).unwrap();
        assert_eq!(
            (back[1].code, back[1].jt, back[1].jf, back[1].k),
            (6, 1, 2, 0x7fff_0000)
        );
        assert_eq!(encode(&back), bytes);
        assert!(decode(&[]).is_err());
        assert!(decode(&bytes[..15]).is_err());
        assert!(decode(&vec![0; 8 * (MAX_INSTRUCTIONS + 1)]).is_err());
    }
}
