//! The paper's layer groups: layers `1..=L` split in thirds (Early, Middle, Late) plus their
//! Average; layer 0 (the embeddings) belongs to none. The sweep summary and the report both
//! group through [`layer_groups`].

/// The paper's thirds: group of layer `l` in `1..=num_layers` (0 = Early, 1 = Middle, 2 = Late).
pub fn third_of(layer: usize, num_layers: usize) -> Option<usize> {
    (layer >= 1 && layer <= num_layers).then(|| (layer - 1) * 3 / num_layers)
}

/// The group rows, in order.
pub const GROUPS: [&str; 4] = ["Early", "Middle", "Late", "Average"];

/// For each group of [`GROUPS`] that has members among `layers`: its name and the positions in
/// `layers` of its members (Average: every layer in a third).
pub fn layer_groups(layers: &[usize], num_layers: usize) -> Vec<(&'static str, Vec<usize>)> {
    GROUPS
        .iter()
        .enumerate()
        .map(|(g, &name)| {
            let members: Vec<usize> = (0..layers.len())
                .filter(|&i| match third_of(layers[i], num_layers) {
                    Some(t) => g == 3 || t == g,
                    None => false,
                })
                .collect();
            (name, members)
        })
        .filter(|(_, members)| !members.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirds_match_the_paper_for_24_layers() {
        assert_eq!(third_of(0, 24), None);
        assert_eq!((1..=8).map(|l| third_of(l, 24)).collect::<Vec<_>>(), vec![Some(0); 8]);
        assert_eq!((9..=16).map(|l| third_of(l, 24)).collect::<Vec<_>>(), vec![Some(1); 8]);
        assert_eq!((17..=24).map(|l| third_of(l, 24)).collect::<Vec<_>>(), vec![Some(2); 8]);
        assert_eq!(third_of(25, 24), None);
    }

    #[test]
    fn groups_list_the_positions_of_their_members() {
        // Layers 0..=6 of a 6-layer tower: thirds {1,2}, {3,4}, {5,6}; layer 0 in none.
        let layers: Vec<usize> = (0..=6).collect();
        let g = layer_groups(&layers, 6);
        let names: Vec<&str> = g.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, GROUPS);
        assert_eq!(g[0].1, vec![1, 2]);
        assert_eq!(g[3].1, vec![1, 2, 3, 4, 5, 6]);
        // Only some layers requested: empty groups are left out.
        let g = layer_groups(&[0, 5], 6);
        assert_eq!(g, vec![("Late", vec![1]), ("Average", vec![1])]);
    }
}
