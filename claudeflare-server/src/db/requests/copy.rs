//! PostgreSQL's binary `COPY` format for request rows, in the order of `COLUMNS`.
//!
//! Why `COPY`: with multi-row `INSERT`s of up to 1,024 rows, `claudeflare-bench --postgres`
//! recorded 23–81% of its flood (27–30k requests a second on two shared cores) and dropped the
//! rest; PostgreSQL parsed and planned each statement and bound 21 parameters a row. One binary
//! `COPY` a batch is a single message stream that PostgreSQL reads straight into the table
//! (docs/benchmarks-history.md, "Records on PostgreSQL by COPY").
//!
//! The format (PostgreSQL docs, "COPY — Binary Format"): a signature, flags and a header
//! extension length; per row the field count, then per field its length (-1 for NULL) and its
//! bytes in network order; a trailer of -1. Each field is sent as its column's type receives it:
//! `text`/`varchar` as UTF-8, `int4`, `int8`, `float8`, `bool` as one byte, `timestamptz` as
//! microseconds since 2000-01-01 UTC.

use crate::pricing::Cost;
use bytes::{BufMut, BytesMut};
use claudeflare_tower::RequestRecord;

use super::COLUMNS;
use crate::db::int;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
const POSTGRES_EPOCH_US: i64 = 946_684_800_000_000;

/// The whole `COPY` stream of `rows`.
pub(super) fn binary(rows: &[&(RequestRecord, Cost)]) -> BytesMut {
    // About 200 bytes a row with its paths and names; grown if needed.
    let mut out = BytesMut::with_capacity(SIGNATURE.len() + 10 + rows.len() * 256);
    out.put_slice(SIGNATURE);
    out.put_i32(0); // flags: no OIDs
    out.put_i32(0); // header extension: none
    let fields = i16::try_from(COLUMNS.len()).unwrap_or(i16::MAX);
    for (record, cost) in rows {
        out.put_i16(fields);
        text(&mut out, Some(&record.id));
        let micros = record.timestamp.timestamp_micros() - POSTGRES_EPOCH_US;
        fixed(&mut out, &micros.to_be_bytes());
        text(&mut out, Some(&record.method));
        text(&mut out, Some(&record.path));
        text(&mut out, record.account_id.as_deref());
        text(&mut out, record.account.as_deref());
        optional(&mut out, record.status.map(|s| i32::from(s).to_be_bytes()));
        fixed(&mut out, &[u8::from(record.success)]);
        text(&mut out, record.error.as_deref());
        fixed(&mut out, &int(record.response_time_ms).to_be_bytes());
        optional(&mut out, record.first_byte_ms.map(|v| int(v).to_be_bytes()));
        optional(&mut out, record.upstream_ms.map(|v| int(v).to_be_bytes()));
        let attempts = i32::try_from(record.failover_attempts).unwrap_or(i32::MAX);
        fixed(&mut out, &attempts.to_be_bytes());
        text(&mut out, record.model.as_deref());
        text(&mut out, record.requested_model.as_deref());
        fixed(&mut out, &[u8::from(record.stream)]);
        for tokens in [
            record.usage.input_tokens,
            record.usage.output_tokens,
            record.usage.cache_read_input_tokens,
            record.usage.cache_creation_input_tokens,
        ] {
            fixed(&mut out, &int(tokens).to_be_bytes());
        }
        fixed(&mut out, &cost.usd.to_be_bytes());
        fixed(&mut out, &[u8::from(cost.known)]);
        text(&mut out, record.client.as_deref());
        text(&mut out, record.provider.as_deref());
    }
    out.put_i16(-1);
    out
}

fn fixed(out: &mut BytesMut, bytes: &[u8]) {
    // Fields are at most 8 bytes here.
    out.put_i32(bytes.len() as i32);
    out.put_slice(bytes);
}

fn optional<const N: usize>(out: &mut BytesMut, value: Option<[u8; N]>) {
    match value {
        Some(bytes) => fixed(out, &bytes),
        None => out.put_i32(-1),
    }
}

fn text(out: &mut BytesMut, value: Option<&str>) {
    match value {
        // A field longer than 2 GiB cannot be in a record: paths and errors are bounded far
        // below (the request line, an error message).
        Some(value) => {
            out.put_i32(i32::try_from(value.len()).unwrap_or(i32::MAX));
            out.put_slice(value.as_bytes());
        }
        None => out.put_i32(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_laid_out_as_postgres_reads_it() {
        let timestamp = chrono::DateTime::parse_from_rfc3339("2000-01-01T00:00:01Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let record = RequestRecord::new("r", timestamp, "GET", "/v1/x");
        let bytes = binary(&[&(
            record,
            Cost {
                usd: 0.5,
                known: true,
            },
        )]);
        assert!(bytes.starts_with(SIGNATURE));
        let row = &bytes[SIGNATURE.len() + 8..];
        assert_eq!(&row[..2], &24i16.to_be_bytes(), "one field per column");
        // id: length 1, "r"; then the timestamp: 8 bytes, one second after PostgreSQL's epoch.
        assert_eq!(&row[2..7], &[0, 0, 0, 1, b'r']);
        assert_eq!(&row[7..11], &8i32.to_be_bytes());
        assert_eq!(&row[11..19], &1_000_000i64.to_be_bytes());
        assert_eq!(&bytes[bytes.len() - 2..], &(-1i16).to_be_bytes(), "trailer");
    }
}
