//! Sizes on the command line: `1GiB`, `512MiB`, `64KiB`, `2G`, `100MB`, or a
//! bare number of bytes. `Ki`/`Mi`/`Gi`/`Ti` (and `K`/`M`/`G`/`T`) are powers of
//! 1024; `KB`/`MB`/`GB`/`TB` powers of 1000, as they are written elsewhere.

/// Parses a size in bytes, with an error that quotes the input and says what
/// is expected. Zero is refused: a limit of nothing is a mistake.
pub fn parse(input: &str) -> Result<u64, String> {
    let invalid =
        || format!("invalid size {input:?}: expected e.g. 1GiB, 512MiB, 64KiB or a number of bytes");
    let text = input.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "Ki" | "KiB" => 1 << 10,
        "M" | "Mi" | "MiB" => 1 << 20,
        "G" | "Gi" | "GiB" => 1 << 30,
        "T" | "Ti" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(invalid()),
    };
    let bytes = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {input:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("size {input:?} is zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_usual_spelling() {
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("64Ki"), Ok(64 << 10));
        assert_eq!(parse("2G"), Ok(2 << 30));
        assert_eq!(parse("100MB"), Ok(100_000_000));
        assert_eq!(parse("1 GiB"), Ok(1 << 30));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(
            parse("1XB"),
            Err("invalid size \"1XB\": expected e.g. 1GiB, 512MiB, 64KiB or a number of bytes".into())
        );
        assert!(parse("GiB").is_err());
        assert!(parse("-1GiB").is_err());
        assert!(parse("1.5GiB").is_err());
        assert_eq!(parse("0MiB"), Err("size \"0MiB\" is zero".into()));
        assert_eq!(
            parse("99999999TiB"),
            Err("size \"99999999TiB\" is too large".into())
        );
    }
}
