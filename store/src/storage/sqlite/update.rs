//! One `UPDATE table SET a = ?, b = ? WHERE id = ?` from the fields a
//! `*Changes` holds.

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Transaction};

use super::error::R;

/// The columns an update sets. Column and table names are constants of this
/// backend, never input.
#[derive(Debug, Default)]
pub(super) struct Assignments(Vec<(&'static str, Value)>);

impl Assignments {
    /// Sets `column` to `value`.
    pub(super) fn set(mut self, column: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((column, value.into()));
        self
    }

    /// Sets `column` when the change is present (`None` = left alone).
    pub(super) fn set_some<T: Into<Value>>(self, column: &'static str, change: Option<T>) -> Self {
        match change {
            Some(v) => self.set(column, v),
            None => self,
        }
    }

    /// The statement, its parameters in order and the row id last.
    fn statement(self, table: &'static str, id: &str) -> (String, Vec<Value>) {
        let sets: Vec<String> = self.0.iter().enumerate().map(|(i, (c, _))| format!("{c} = ?{}", i + 1)).collect();
        let sql = format!("UPDATE {table} SET {} WHERE id = ?{}", sets.join(", "), self.0.len() + 1);
        let mut values: Vec<Value> = self.0.into_iter().map(|(_, v)| v).collect();
        values.push(Value::Text(id.to_string()));
        (sql, values)
    }

    /// Runs the update of row `id` of `table`; returns the rows changed.
    pub(super) fn execute(self, tx: &Transaction<'_>, table: &'static str, id: &str) -> R<usize> {
        let (sql, values) = self.statement(table, id);
        Ok(tx.prepare_cached(&sql)?.execute(params_from_iter(values))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_present_changes_become_assignments_and_the_id_comes_last() {
        let (sql, values) = Assignments::default()
            .set_some("name", Some("n".to_string()))
            .set_some::<String>("description", None)
            .set_some("config_id", Some(None::<String>))
            .set("updated_ms", 5i64)
            .statement("access_keys", "ak_1");
        assert_eq!(sql, "UPDATE access_keys SET name = ?1, config_id = ?2, updated_ms = ?3 WHERE id = ?4");
        assert_eq!(values, vec![Value::Text("n".into()), Value::Null, Value::Integer(5), Value::Text("ak_1".into())]);
    }
}
