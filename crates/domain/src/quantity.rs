use serde::{Deserialize, Serialize};

/// What a meter reports. The order is stable: storage encodes a reading's quantities by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// RMS voltage, V.
    Voltage,
    /// RMS current, A.
    Current,
    /// Active power, W. Negative means export.
    Power,
    /// Apparent power, VA.
    ApparentPower,
    /// Reactive power, var.
    ReactivePower,
    /// Power factor, -1..=1 (sign marks export or a leading load, as the meter reports it).
    PowerFactor,
    /// Grid frequency, Hz.
    Frequency,
    /// Cumulative imported energy counter, kWh.
    Energy,
    /// Cumulative exported energy counter, kWh.
    EnergyExport,
}

impl Quantity {
    pub const ALL: [Quantity; 9] = [
        Quantity::Voltage,
        Quantity::Current,
        Quantity::Power,
        Quantity::ApparentPower,
        Quantity::ReactivePower,
        Quantity::PowerFactor,
        Quantity::Frequency,
        Quantity::Energy,
        Quantity::EnergyExport,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The field name used in JSON readings, the line protocol, SQL columns and query parameters.
    pub const fn field(self) -> &'static str {
        match self {
            Quantity::Voltage => "voltage",
            Quantity::Current => "current",
            Quantity::Power => "power",
            Quantity::ApparentPower => "apparent_power",
            Quantity::ReactivePower => "reactive_power",
            Quantity::PowerFactor => "power_factor",
            Quantity::Frequency => "frequency",
            Quantity::Energy => "energy",
            Quantity::EnergyExport => "energy_export",
        }
    }

    pub const fn unit(self) -> &'static str {
        match self {
            Quantity::Voltage => "V",
            Quantity::Current => "A",
            Quantity::Power => "W",
            Quantity::ApparentPower => "VA",
            Quantity::ReactivePower => "var",
            Quantity::PowerFactor => "",
            Quantity::Frequency => "Hz",
            Quantity::Energy | Quantity::EnergyExport => "kWh",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<Quantity> {
        Self::ALL.get(i).copied()
    }

    pub fn from_field(name: &str) -> Option<Quantity> {
        Self::ALL.into_iter().find(|q| q.field() == name)
    }

    /// Cumulative counters are kept as `last` in rollups; their energy goes to the bucket's
    /// energy columns instead of an average.
    pub const fn is_counter(self) -> bool {
        matches!(self, Quantity::Energy | Quantity::EnergyExport)
    }
}

/// The quantities of one reading. At most one value per quantity; absent ones are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Values {
    present: u16,
    v: [f64; Quantity::COUNT],
}

impl Values {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, q: Quantity, value: f64) -> Self {
        self.set(q, value);
        self
    }

    pub fn set(&mut self, q: Quantity, value: f64) {
        self.present |= 1 << q.index();
        self.v[q.index()] = value;
    }

    pub fn get(&self, q: Quantity) -> Option<f64> {
        (self.present & (1 << q.index()) != 0).then(|| self.v[q.index()])
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Bit i set when quantity i is present; storage writes it as the reading's column mask.
    pub fn mask(&self) -> u16 {
        self.present
    }

    /// The present quantities and their values, in [`Quantity::ALL`] order. Walks the set bits
    /// of the mask, so a reading with four quantities costs four steps, not nine.
    pub fn iter(&self) -> impl Iterator<Item = (Quantity, f64)> + '_ {
        let mut bits = self.present;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some((Quantity::ALL[i], self.v[i]))
        })
    }

    /// Later values win: used when a duplicate reading for the same instant completes another.
    pub fn overlay(&mut self, newer: &Values) {
        for (q, v) in newer.iter() {
            self.set(q, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_round_trip() {
        for q in Quantity::ALL {
            assert_eq!(Quantity::from_field(q.field()), Some(q));
            assert_eq!(Quantity::from_index(q.index()), Some(q));
        }
        assert_eq!(Quantity::from_field("watts"), None);
    }

    #[test]
    fn values_track_presence() {
        let v = Values::new()
            .with(Quantity::Power, 0.0)
            .with(Quantity::Energy, 12.5);
        assert_eq!(v.get(Quantity::Power), Some(0.0));
        assert_eq!(v.get(Quantity::Voltage), None);
        assert_eq!(v.iter().count(), 2);
        let mut a = v;
        a.overlay(&Values::new().with(Quantity::Power, 5.0));
        assert_eq!(a.get(Quantity::Power), Some(5.0));
        assert_eq!(a.get(Quantity::Energy), Some(12.5));
    }

    #[test]
    fn iter_yields_present_values_in_quantity_order() {
        for mask in 0u16..(1 << Quantity::COUNT) {
            let mut v = Values::new();
            for q in Quantity::ALL.into_iter().rev() {
                if mask & (1 << q.index()) != 0 {
                    v.set(q, q.index() as f64 + 0.5);
                }
            }
            let want: Vec<(Quantity, f64)> = Quantity::ALL
                .into_iter()
                .filter_map(|q| v.get(q).map(|x| (q, x)))
                .collect();
            assert_eq!(v.iter().collect::<Vec<_>>(), want, "mask {mask:#x}");
        }
    }
}
