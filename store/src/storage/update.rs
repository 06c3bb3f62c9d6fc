//! One `UPDATE table SET a = ?, b = ? WHERE id = ?` from the fields a
//! `*Changes` holds, for any backend: `V` is the backend's parameter value,
//! and the backend says how a parameter is written (`?1`, `$1`).

/// The columns an update sets. Column and table names are constants of the
/// backends, never input.
#[derive(Debug)]
pub(crate) struct Assignments<V>(Vec<(&'static str, V)>);

impl<V> Default for Assignments<V> {
    fn default() -> Self {
        Assignments(Vec::new())
    }
}

impl<V> Assignments<V> {
    /// Sets `column` to `value`.
    pub(crate) fn set(mut self, column: &'static str, value: impl Into<V>) -> Self {
        self.0.push((column, value.into()));
        self
    }

    /// Sets `column` when the change is present (`None` = left alone).
    pub(crate) fn set_some<T: Into<V>>(self, column: &'static str, change: Option<T>) -> Self {
        match change {
            Some(v) => self.set(column, v),
            None => self,
        }
    }

    /// The statement of row `id` of `table`, its parameters in order and the
    /// id last; `placeholder(n)` writes parameter `n` (from 1).
    pub(crate) fn statement(
        self,
        table: &'static str,
        id: impl Into<V>,
        placeholder: fn(usize) -> String,
    ) -> (String, Vec<V>) {
        let sets: Vec<String> =
            self.0.iter().enumerate().map(|(i, (c, _))| format!("{c} = {}", placeholder(i + 1))).collect();
        let sql = format!("UPDATE {table} SET {} WHERE id = {}", sets.join(", "), placeholder(self.0.len() + 1));
        let mut values: Vec<V> = self.0.into_iter().map(|(_, v)| v).collect();
        values.push(id.into());
        (sql, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum V {
        Null,
        Text(String),
        Int(i64),
    }

    impl From<String> for V {
        fn from(s: String) -> Self {
            V::Text(s)
        }
    }

    impl From<&str> for V {
        fn from(s: &str) -> Self {
            V::Text(s.into())
        }
    }

    impl From<i64> for V {
        fn from(i: i64) -> Self {
            V::Int(i)
        }
    }

    impl From<Option<String>> for V {
        fn from(s: Option<String>) -> Self {
            s.map_or(V::Null, V::Text)
        }
    }

    #[test]
    fn only_present_changes_become_assignments_and_the_id_comes_last() {
        let (sql, values) = Assignments::<V>::default()
            .set_some("name", Some("n".to_string()))
            .set_some::<String>("description", None)
            .set_some("config_id", Some(None::<String>))
            .set("updated_ms", 5i64)
            .statement("access_keys", "ak_1", |n| format!("${n}"));
        assert_eq!(sql, "UPDATE access_keys SET name = $1, config_id = $2, updated_ms = $3 WHERE id = $4");
        assert_eq!(values, vec![V::Text("n".into()), V::Null, V::Int(5), V::Text("ak_1".into())]);
    }
}
