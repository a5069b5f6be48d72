//! `netcage key trust FILE`: vouch for a key file netcage refused as possibly planted.

use netcage::keytrust::Store;
use netcage::token::Key;

use super::{KeyCmd, input_error};

pub fn key(cmd: KeyCmd) -> anyhow::Result<u8> {
    match cmd {
        KeyCmd::Trust { file } => {
            let loaded = Key::load(&file)?;
            let store = Store::default_location();
            store.trust(&file, &loaded.key).map_err(input_error)?;
            eprintln!(
                "netcage: trusting the key file {} from now on ({}; the list is {})",
                file.display(),
                loaded.key.id(),
                store.dir().join(netcage::keytrust::FILE).display()
            );
        }
    }
    Ok(0)
}
