//! `netcage demo`.

use super::DemoArgs;

pub fn demo(_args: DemoArgs) -> anyhow::Result<u8> {
    anyhow::bail!("the demo is not written yet")
}
