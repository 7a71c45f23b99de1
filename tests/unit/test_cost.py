"""Cloud cost estimates: cheapest fitting instance, right-sizing from measured peaks, and clear
errors for unknown providers, regions and broken price tables."""

import pytest

from vboxlab.cost import Need, PriceTable, cheapest_fit, estimate, needs_of_lab, right_size
from vboxlab.errors import ConfigError


@pytest.fixture(scope="module")
def table():
    return PriceTable.load()


def test_the_shipped_table_says_where_and_when_its_prices_are_from(table):
    assert table.as_of and table.currency == "USD"
    assert set(table.providers) == {"aws", "gcp", "azure"}
    for regions in table.providers.values():
        for instances in regions.values():
            assert all(i.hourly > 0 for i in instances.values())


def test_each_machine_gets_the_cheapest_instance_that_fits(table):
    _, aws = table.region("aws", None)
    assert cheapest_fit(aws, 1, 256)[0] == "t3.nano"
    assert cheapest_fit(aws, 2, 3000)[0] == "t3.medium"
    assert cheapest_fit(aws, 4, 8192)[0] == "t3.xlarge"  # 0.1664 beats c6i.xlarge's 0.17
    with pytest.raises(ConfigError, match="no instance in the table has 64 CPUs"):
        cheapest_fit(aws, 64, 1024)


def test_right_sizing_uses_the_peaks_with_headroom(table):
    assert right_size(Need("db", 2, 2048)) is None  # never measured: no advice
    assert right_size(Need("db", 2, 2048, peak_rss_mib=310, peak_cpu_percent=40)) == (512, 1)
    assert right_size(Need("db", 1, 512, peak_rss_mib=500)) == (512, 1)  # never above asked
    report = estimate([Need("db", 2, 2048, 310.0, 40.0), Need("web", 1, 256, 200.0, 90.0)],
                      table, "aws", "us-east-1", duration_s=1800)
    db, web = report.machines
    assert (db.instance, web.instance) == ("t3.small", "t3.nano")
    assert db.per_run == pytest.approx(0.0208 / 2)
    assert report.per_run == pytest.approx((0.0208 + 0.0052) / 2)
    assert report.recommendations() == [
        "db: 2048 MiB asked, 310 MiB peak -> 512 MiB, 2 -> 1 CPUs (t3.nano) saves 11.39 "
        "USD/month"]
    assert web.smaller is None


def test_lab_records_become_needs(table):
    machines = {"a": {"launch": {"cpus": 2, "memory": 1024}}, "b": {"launch": {}}}
    usage = {"duration_s": 42.0, "machines": {"a": {"peak_rss": 300 << 20,
                                                    "peak_cpu_percent": 150.0, "samples": 5}}}
    needs, duration = needs_of_lab(machines, usage)
    assert duration == 42.0
    assert needs == [Need("a", 2, 1024, 300.0, 150.0), Need("b", 1, 256, None, None)]


def test_unknown_providers_regions_and_broken_tables_are_named(table, tmp_path):
    with pytest.raises(ConfigError, match="no aws prices for region 'mars-1'; the table has "
                                          "us-east-1"):
        table.region("aws", "mars-1")
    with pytest.raises(ConfigError, match="no prices for provider 'oracle'"):
        table.region("oracle", None)
    broken = tmp_path / "prices.yaml"
    broken.write_text("as_of: x\ncurrency: USD\nproviders: {aws: {r: {t1: {cpus: 0, "
                      "memory_mib: 512, hourly: 1}}}}\n")
    with pytest.raises(ConfigError, match=r"price table .*prices.yaml: providers.aws.r.t1.cpus"):
        PriceTable.load(broken)
