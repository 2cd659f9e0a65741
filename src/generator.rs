//! The event generator: the servlets' "Event generator" thread. It sleeps a random time in a
//! range (0–5 s by default, like the original) and publishes `At <time>`.

use crate::lab::Lab;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Start the named generator thread. It runs until the lab stops.
pub fn spawn(
    lab: Arc<Lab>,
    range_ms: RangeInclusive<u64>,
) -> std::io::Result<thread::JoinHandle<()>> {
    let mut random = XorShift::seeded();
    thread::Builder::new()
        .name("generator".into())
        .spawn(move || loop {
            let span = range_ms.end() - range_ms.start() + 1;
            let pause = range_ms.start() + random.next() % span;
            // BLOCKS: sleeps until the next event is due, or the lab stops.
            if !lab.shutdown.sleep(Duration::from_millis(pause)) {
                return;
            }
            if let Err(e) = lab.publish(format!("At {}", utc_now())) {
                log::debug!("generator: {e}"); // (only with --redis)
            }
        })
}

/// A tiny xorshift generator: enough to scatter events, no crate needed.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        XorShift(nanos | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The current time as `2026-11-21 15:40:06.123 UTC`.
pub fn utc_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to a (year, month, day) date; Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_778), (2026, 11, 21));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
