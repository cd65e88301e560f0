"""Byte-level emulators of the hall's parts, for tests and ``--simulate``.

Each emulator takes physical values (``chip.set(temperature_c=23.4)``) and
answers with the raw bytes the real part would send, so the real driver
decodes them. Faults can be injected (``chip.fault = "crc"``, ``"absent"``, …).

- ``i2c``: ``EmulatedI2CBus``, smbus2-compatible (``i2c_rdwr`` with ``i2c_msg``
  and the register calls), and the Sensirion chips and the BME280 behind it;
- ``serialdev``: a device behind a pseudo-terminal, so pyserial opens a real
  tty; ``winsen`` (MH-Z19, ZE08) and ``pms`` (PMS5003) build on it;
- ``w1``: a DS18B20 as a folder of 1-Wire sysfs files.
"""
