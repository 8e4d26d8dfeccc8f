//! What the bench prints: one markdown table per section, and the same figures as JSON.

use serde_json::{Map, Value, json};

/// One section's table.
pub struct Table {
    title: String,
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: &str, columns: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A row; numbers are rounded for printing only, the JSON keeps them whole.
    pub fn row(&mut self, cells: Vec<Value>) {
        self.rows.push(cells);
    }

    /// A line printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn print(&self) {
        println!("\n### {}\n", self.title);
        println!("| {} |", self.columns.join(" | "));
        let aligns: Vec<&str> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", aligns.join("|"));
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(cell).collect();
            println!("| {} |", cells.join(" | "));
        }
        for note in &self.notes {
            println!("\n{note}");
        }
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let object: Map<String, Value> = self
                    .columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect();
                Value::Object(object)
            })
            .collect();
        json!({ "title": self.title, "rows": rows, "notes": self.notes })
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        Value::String(text) => text.clone(),
        Value::Number(number) => match number.as_f64() {
            Some(x) if number.is_f64() => {
                if x.abs() >= 100.0 {
                    format!("{x:.0}")
                } else if x.abs() >= 10.0 {
                    format!("{x:.1}")
                } else {
                    format!("{x:.2}")
                }
            }
            _ => number.to_string(),
        },
        other => other.to_string(),
    }
}

/// A number cell, or `—` when there is none.
pub fn num(value: Option<f64>) -> Value {
    value
        .filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

/// Whether a target is met, for the targets table.
pub fn verdict(met: Option<bool>) -> Value {
    json!(match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    })
}
