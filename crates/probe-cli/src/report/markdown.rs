//! Markdown table pieces shared by the report's tables and the safety–utility table.

/// Writes a table's header row and its `|---|` rule: the `lead` columns, then one per title.
pub fn table_header<'a>(s: &mut String, lead: &[&'a str], titles: impl Iterator<Item = &'a str> + Clone) {
    s.push('|');
    for c in lead.iter().copied().chain(titles.clone()) {
        s.push(' ');
        s.push_str(c);
        s.push_str(" |");
    }
    s.push_str("\n|");
    s.push_str(&"---|".repeat(lead.len() + titles.count()));
    s.push('\n');
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_and_rule_have_one_cell_per_column() {
        let mut s = String::new();
        super::table_header(&mut s, &["layer", "n"], ["ASR (lg)", "reward (rm)"].into_iter());
        assert_eq!(s, "| layer | n | ASR (lg) | reward (rm) |\n|---|---|---|---|\n");
    }
}
