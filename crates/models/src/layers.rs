//! Layer indexing of every vision tower here: transformers' `hidden_states` convention (0 is the
//! embedding output, `l` the output of encoder layer `l`, negative indices count from the end),
//! and the `--layers` list syntax.
use crate::error::{Error, Result};

/// Resolves a layer index in transformers' `hidden_states` convention (negative counts from the
/// end: -1 is the last layer) against a tower of `num_layers` layers.
pub fn resolve_layer(layer: i64, num_layers: usize) -> Result<usize> {
    let n = num_layers as i64;
    let resolved = if layer < 0 { n + 1 + layer } else { layer };
    if !(0..=n).contains(&resolved) {
        return Err(Error::invalid(format!(
            "layer {layer} is out of range: the vision tower has layers 0..={n} (or -{}..=-1)",
            n + 1
        )));
    }
    Ok(resolved as usize)
}

/// Parses a layer list: `all` (0..=L), `a..b` (inclusive), or a comma list such as `3,7,-2`
/// (ranges may appear inside lists). Returns sorted, de-duplicated, non-negative indices.
pub fn parse_layers(spec: &str, num_layers: usize) -> Result<Vec<usize>> {
    let spec = spec.trim();
    let mut out = Vec::new();
    if spec == "all" {
        out.extend(0..=num_layers);
    } else {
        for part in spec.split(',').map(str::trim) {
            let num = |s: &str| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| Error::invalid(format!("`{s}` in layer list `{spec}` is not a layer index")))
            };
            if let Some((a, b)) = part.split_once("..") {
                let (a, b) =
                    (resolve_layer(num(a)?, num_layers)?, resolve_layer(num(b.trim_start_matches('='))?, num_layers)?);
                if a > b {
                    return Err(Error::invalid(format!("layer range `{part}` is empty")));
                }
                out.extend(a..=b);
            } else {
                out.push(resolve_layer(num(part)?, num_layers)?);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_follow_transformers_hidden_states() {
        // 24 layers: hidden_states has 25 entries; -2 is layer 23, LLaVA-1.5's default.
        assert_eq!(resolve_layer(-2, 24).unwrap(), 23);
        assert_eq!(resolve_layer(-1, 24).unwrap(), 24);
        assert_eq!(resolve_layer(-25, 24).unwrap(), 0);
        assert_eq!(resolve_layer(0, 24).unwrap(), 0);
        assert!(resolve_layer(25, 24).is_err());
        assert!(resolve_layer(-26, 24).is_err());
    }

    #[test]
    fn parses_layer_specs() {
        assert_eq!(parse_layers("all", 3).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_layers("1..3", 6).unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_layers("3,7,-2", 24).unwrap(), vec![3, 7, 23]);
        assert_eq!(parse_layers("-3..-1", 6).unwrap(), vec![4, 5, 6]);
        assert_eq!(parse_layers("2, 0..1 ,2", 6).unwrap(), vec![0, 1, 2]);
        let e = parse_layers("30", 24).unwrap_err().to_string();
        assert!(e.contains("layer 30 is out of range"), "{e}");
        assert!(parse_layers("x", 4).is_err());
        assert!(parse_layers("3..1", 4).is_err());
    }
}
