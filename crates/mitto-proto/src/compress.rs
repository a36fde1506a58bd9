//! LZ4 payload compression (the COMPRESSED flag, negotiated as `COMPRESSION_LZ4`).
//!
//! A compressed payload is the uncompressed length as a u32 BE followed by one LZ4 block. The
//! receiver checks that length against its payload limit before allocating the output.

use crate::error::DecodeErrorKind;
use bytes::Bytes;

/// Checks the length prefix of a compressed payload against the limit.
pub(crate) fn check_prefix(p: &[u8], max: u32) -> Result<u32, DecodeErrorKind> {
    let prefix: [u8; 4] = p
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeErrorKind::Decompression("missing length prefix"))?;
    let n = u32::from_be_bytes(prefix);
    if n > max {
        return Err(DecodeErrorKind::PayloadTooLarge {
            len: n.into(),
            max: max.into(),
        });
    }
    Ok(n)
}

/// Compresses a payload (length prefix + LZ4 block).
#[cfg(feature = "lz4")]
pub fn compress(p: &[u8]) -> Bytes {
    let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + lz4_flex::block::get_maximum_output_size(p.len()));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&lz4_flex::block::compress(p));
    Bytes::from(out)
}

/// Decompresses a payload, refusing an uncompressed length over `max`.
#[cfg(feature = "lz4")]
pub fn decompress(p: &[u8], max: u32) -> Result<Bytes, DecodeErrorKind> {
    let n = check_prefix(p, max)? as usize;
    let mut out = vec![0u8; n];
    let written = lz4_flex::block::decompress_into(&p[4..], &mut out)
        .map_err(|_| DecodeErrorKind::Decompression("invalid LZ4 block"))?;
    if written != n {
        return Err(DecodeErrorKind::Decompression(
            "length prefix does not match the block",
        ));
    }
    Ok(Bytes::from(out))
}

/// Without the `lz4` feature, compressed payloads cannot be read.
#[cfg(not(feature = "lz4"))]
pub fn decompress(_p: &[u8], _max: u32) -> Result<Bytes, DecodeErrorKind> {
    Err(DecodeErrorKind::Decompression("built without LZ4 support"))
}

#[cfg(all(test, feature = "lz4"))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let data = b"hello hello hello hello hello hello".repeat(20);
        let c = compress(&data);
        assert!(c.len() < data.len());
        assert_eq!(decompress(&c, 1 << 20).unwrap(), Bytes::from(data.clone()));
        assert!(matches!(
            decompress(&c, 10),
            Err(DecodeErrorKind::PayloadTooLarge { .. })
        ));
        let mut bad = c.to_vec();
        bad[0..4].copy_from_slice(&5u32.to_be_bytes());
        assert!(decompress(&bad, 1 << 20).is_err());
        assert!(decompress(&[0, 0], 10).is_err());
        assert!(decompress(&[0, 0, 0, 9, 0xff, 0xff], 100).is_err());
    }
}
