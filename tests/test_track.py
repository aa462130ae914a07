"""`rts-seg track` on real files: constructed slumps with known fates written in three CRSs and three formats (one
year a sharded run, a slump cut by its seam), the errors a user can make, and the experts' polygons of the labelling
intercomparison (Nitze et al. 2024) used as years, for real shapes."""

import json, os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyogrio.raw
import pytest
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import shape

from conftest import ROOT, rts_seg
from rts_seg.cli import main

DATA = Path(os.environ.get('RTS_SEG_INTERCOMPARISON', ROOT.parent / 'shared' / 'data' / 'rts_intercomparison'))
STATUSES = {'new', 'growing', 'stable', 'shrinking', 'merged', 'split', 'gone'}
X, Y = 500_000, 7_600_000  # EPSG:32608, the Peel Plateau


def b(x0, y0, x1, y1):
    return shapely.box(X + x0, Y + y0, X + x1, Y + y1)


# what happens to each slump (boxes in metres from X, Y): its polygon each year, None where it has none
SLUMPS = dict(
    grows=[b(0, 0, 200, 100), b(0, 0, 200, 115), b(0, 0, 200, 145)],  # headwall retreats 15 m, then 30 m
    steady=[b(300, 0, 400, 100), b(300, 0, 400, 102), b(300, 0, 400, 102)],
    shrinks=[b(500, 300, 600, 400), b(500, 300, 600, 375), b(500, 300, 600, 375)],  # -25 %
    splits=[b(500, 0, 800, 60), b(500, 0, 630, 60) | b(670, 0, 800, 60), None],  # two pieces in 2020, gone in 2021
    merge_a=[b(0, 300, 80, 380), b(0, 300, 180, 380), b(0, 300, 180, 380)],
    merge_b=[b(100, 300, 180, 380), None, None],
    goes=[b(300, 300, 350, 350), None, None],
    appears=[None, b(900, 900, 960, 960), b(900, 900, 975, 960)],
)


def write(path, polys, crs, driver='GPKG', layer=None):
    "Polygons given in EPSG:32608, written to `path` in `crs`."
    if crs != 'EPSG:32608':
        polys = [shape(transform_geom('EPSG:32608', crs, p.__geo_interface__)) for p in polys]
    wkb = np.array([shapely.to_wkb(p) for p in polys], dtype=object)
    pyogrio.raw.write(
        path, wkb, [np.arange(len(polys))], ['id'], driver=driver, geometry_type='Polygon', crs=crs, layer=layer
    )


def write_geoparquet(path, polys, crs):
    "Polygons given in EPSG:32608 as GeoParquet 1.1 in `crs` (WKB, PROJJSON), as `rts-seg predict` writes them."
    polys = [shape(transform_geom('EPSG:32608', crs, p.__geo_interface__)) for p in polys]
    col = dict(encoding='WKB', geometry_types=['Polygon'], crs=CRS.from_user_input(crs).to_dict(projjson=True))
    geo = dict(version='1.1.0', primary_column='geometry', columns=dict(geometry=col))
    t = pa.table({'rts_id': pa.array(range(len(polys))), 'geometry': pa.array([shapely.to_wkb(p) for p in polys])})
    pq.write_table(t.replace_schema_metadata({b'geo': json.dumps(geo).encode()}), path)


def year_polys(k):
    return [q for p in SLUMPS.values() if p[k] is not None for q in shapely.get_parts(p[k])]


@pytest.fixture(scope='module')
def years(tmp_path_factory):
    """2019: a GeoPackage in UTM 8N; 2020: a sharded run in EPSG:3413 (mosaic/ of two regions; `grows` cut by their seam,
    their GeoParquet copies, and tiles/ that must be ignored); 2021: GeoJSON in lon/lat."""
    d = tmp_path_factory.mktemp('track')
    write(d / 'rts_2019.gpkg', year_polys(0), 'EPSG:32608')
    (d / 'run2020' / 'mosaic').mkdir(parents=True)
    (d / 'run2020' / 'tiles').mkdir()
    p20 = year_polys(1)
    west = [p20[0] & b(0, 0, 100, 200)] + [p for p in p20[1:] if p.centroid.x < X + 450]
    east = [p20[0] & b(100, 0, 200, 200)] + [p for p in p20[1:] if p.centroid.x >= X + 450]
    write(d / 'run2020' / 'mosaic' / 'west.gpkg', [b(5000, 5000, 5010, 5010)], 'EPSG:3413', layer='other')
    write(d / 'run2020' / 'mosaic' / 'west.gpkg', west, 'EPSG:3413', layer='rts')  # the layer predict writes
    write(d / 'run2020' / 'mosaic' / 'east.gpkg', east, 'EPSG:3413', layer='rts')
    for name, polys in (('west', west), ('east', east)):  # predict's GeoParquet copies: not read twice
        write_geoparquet(d / 'run2020' / 'mosaic' / f'{name}.parquet', polys, 'EPSG:3413')
    write(d / 'run2020' / 'tiles' / 't1.gpkg', [b(2000, 2000, 2100, 2100)], 'EPSG:3413', layer='rts')
    write(d / 'rts_2021.geojson', year_polys(2), 'EPSG:4326', driver='GeoJSON')
    return d


def read(gpkg, layer):
    meta, _, wkb, f = pyogrio.raw.read(gpkg, layer=layer)
    t = pd.DataFrame(dict(zip(meta['fields'], f)))
    t['geometry'] = [None if w is None else shapely.from_wkb(w) for w in wkb]
    return t, meta


def test_track_cli_known_fates(years):
    d = years
    r = rts_seg(
        'track', '--polygons', d / 'rts_2019.gpkg', d / 'run2020', d / 'rts_2021.geojson', '--out', d / 'o' / 'lin.gpkg'
    )
    assert r.returncode == 0, r.stderr
    assert 'over 3 years (2019, 2020, 2021; polygons 7/7/5) in EPSG:32608' in r.stdout, r.stdout
    assert pyogrio.list_layers(d / 'o' / 'lin.gpkg')[:, 0].tolist() == ['slumps', 'lineage']
    assert (d / 'o' / 'lin.png').stat().st_size > 10_000 and (d / 'o' / 'lin.csv').exists()
    s, meta = read(d / 'o' / 'lin.gpkg', 'slumps')
    assert meta['crs'] == 'EPSG:32608'
    assert set(s.status) <= STATUSES and s.slump_id.notna().all()

    def at(name, k):  # the rows of year k whose polygon lies in SLUMPS[name]'s polygon of that year
        g = SLUMPS[name][k]
        return s[(s.year == 2019 + k) & s.geometry.apply(lambda p: p is not None and g.buffer(1).contains(p))]

    sid = {n: at(n, 0).slump_id.item() for n in SLUMPS if SLUMPS[n][0] is not None}
    assert len(set(sid.values())) == len(sid)

    def status(name, k):
        return s[(s.year == 2019 + k) & (s.slump_id == sid[name])].status.tolist()

    assert status('grows', 1) == status('grows', 2) == ['growing']
    g = at('grows', 1).iloc[0]  # whole again: the two regions' pieces dissolved
    assert g.source == 'east.gpkg;west.gpkg'
    assert g.area_m2 == pytest.approx(23_000, abs=1) and g.d_area_m2 == pytest.approx(3000, abs=1)
    assert g.d_area_pct_yr == pytest.approx(15, abs=0.01)
    assert g.retreat_max_m == pytest.approx(15, abs=0.05) and g.retreat_mean_m == pytest.approx(15, abs=0.1)
    g = at('grows', 2).iloc[0]
    assert g.retreat_max_m == pytest.approx(30, abs=0.05) and g.retreat_mean_m == pytest.approx(30, abs=0.1)
    assert status('steady', 1) == ['stable'] and status('shrinks', 1) == ['shrinking']
    pieces = at('splits', 1)
    assert pieces.status.tolist() == ['split', 'split'] and set(pieces.prev_ids) == {str(sid['splits'])}
    assert sid['splits'] in pieces.slump_id.tolist()  # one piece keeps the id
    assert pieces.d_area_m2.sum() == pytest.approx(-40 * 60, abs=1)  # the gap between the pieces
    m = at('merge_a', 1)
    assert m.status.tolist() == ['merged'] and m.slump_id.item() == sid['merge_a']
    assert m.prev_ids.item() == f'{sid["merge_a"]};{sid["merge_b"]}'
    assert status('goes', 1) == ['gone'] and status('goes', 2) == []
    gone = s[(s.year == 2019 + 1) & (s.slump_id == sid['goes'])].iloc[0]
    assert gone.geometry is None and gone.area_m2 == 0 and gone.d_area_m2 == pytest.approx(-2500, abs=1)
    assert at('appears', 1).status.tolist() == ['new'] and at('appears', 2).status.tolist() == ['growing']
    assert sorted(s[s.year == 2021].status) == sorted(
        ['growing', 'stable', 'stable', 'stable', 'growing', 'gone', 'gone']
    )
    assert (s.year == 2020).sum() - (s[s.year == 2020].status == 'gone').sum() == 7  # the tiles/ file was not read

    lin, _ = read(d / 'o' / 'lin.gpkg', 'lineage')
    lin = lin.set_index('slump_id')
    assert sorted(lin.index) == sorted(set(s.slump_id))
    assert lin.loc[sid['merge_b'], 'fate'] == f'merged into {sid["merge_a"]} in 2020'
    assert lin.loc[sid['goes'], 'fate'] == 'gone in 2020'
    assert lin.loc[sid['grows'], 'statuses'] == '2019:new 2020:growing 2021:growing'
    assert lin.loc[sid['grows'], 'retreat_max_m'] == pytest.approx(45, abs=0.05)
    assert lin.loc[sid['grows'], 'growth_m2'] == pytest.approx(9000, abs=1)
    other = pieces[pieces.slump_id != sid['splits']].slump_id.item()
    assert lin.loc[other, 'origin'] == f'split from {sid["splits"]}'
    csv = pd.read_csv(d / 'o' / 'lin.csv')
    assert csv.slump_id.tolist() == sorted(lin.index) and 'geometry' not in csv


def test_track_glob_years_and_crs(years):
    d = years
    out = d / 'g' / 'lin.gpkg'
    r = rts_seg(
        'track', '--polygons', d / 'rts_2019.gpkg', str(d / 'run2020' / 'mosaic' / '*.parquet'),
        '--years', 2018, 2020, '--crs', 'EPSG:3413', '--out', out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s, meta = read(out, 'slumps')
    assert meta['crs'] == 'EPSG:3413' and sorted(set(s.year)) == [2018, 2020]
    # two years apart: the growth of `grows` (+15 %) is 7.5 % per year, below the 10 % of `stable`
    g = s[(s.year == 2020) & (s.source == 'east.parquet;west.parquet')].iloc[0]  # GeoParquet, read with pyarrow
    assert g.d_area_pct_yr == pytest.approx(7.5, abs=0.01) and g.status == 'stable'
    # EPSG:3413's scale at 68 N is not 1: areas differ from UTM's by about 1 %, the statuses are the same
    r2 = rts_seg(
        'track', '--polygons', d / 'rts_2019.gpkg', d / 'run2020', '--years', 2018, 2020, '--out', d / 'g' / 'utm.gpkg'
    )
    assert r2.returncode == 0, r2.stderr
    u, _ = read(d / 'g' / 'utm.gpkg', 'slumps')
    assert sorted(s.status) == sorted(u.status)
    a, au = np.sort(s.area_m2), np.sort(u.area_m2)
    assert np.allclose(a, au, rtol=0.05) and not np.allclose(a, au, rtol=1e-4)


def test_track_errors(years, capsys):
    "Each mistake: exit status 2 and one line naming it (the first through the installed script, the rest in-process)."
    d = years
    out = d / 'e.gpkg'
    r = rts_seg('track', '--polygons', d / 'rts_2019.gpkg', d / 'nope_2020.gpkg', '--out', out)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'nope_2020.gpkg' in r.stderr, r.stderr

    def err(*args):
        with pytest.raises(SystemExit) as e:
            main(['track', *map(str, args)])
        assert e.value.code == 2
        msg = capsys.readouterr().err
        assert msg.startswith('rts-seg: error: ') and msg.count('\n') == 1, msg
        return msg

    assert 'at least two years' in err('--polygons', d / 'rts_2019.gpkg', '--out', out)
    e = err('--polygons', d / 'rts_2019.gpkg', d / 'rts_2021.geojson', '--years', 2019, 2019, '--out', out)
    assert 'year 2019 is given 2 times' in e
    (d / 'peel').mkdir(exist_ok=True)
    write(d / 'peel' / 'a.gpkg', [b(0, 0, 10, 10)], 'EPSG:32608')
    assert 'no 4-digit year in' in err('--polygons', d / 'rts_2019.gpkg', d / 'peel' / 'a.gpkg', '--out', out)
    assert '2 years for 3' in err(
        '--polygons', d / 'rts_2019.gpkg', d / 'run2020', d / 'peel', '--years', 1, 2, '--out', out
    )
    wkb = np.array([shapely.to_wkb(b(0, 0, 10, 10))], dtype=object)
    with pytest.warns(UserWarning, match='crs'):  # pyogrio warns about a file without CRS: the point here
        pyogrio.raw.write(d / 'nocrs_2022.gpkg', wkb, [], [], driver='GPKG', geometry_type='Polygon')
    assert 'nocrs_2022.gpkg has no CRS' in err('--polygons', d / 'rts_2019.gpkg', d / 'nocrs_2022.gpkg', '--out', out)
    (d / 'bad_2022.gpkg').write_text('not a GeoPackage')
    assert 'cannot read polygons' in err('--polygons', d / 'rts_2019.gpkg', d / 'bad_2022.gpkg', '--out', out)
    (d / 'empty2023').mkdir()
    assert 'holds no polygon file' in err('--polygons', d / 'rts_2019.gpkg', d / 'empty2023', '--out', out)
    assert 'not projected' in err('--polygons', d / 'rts_2019.gpkg', d / 'run2020', '--crs', 'EPSG:4326', '--out', out)
    assert 'must lie in (0, 1]' in err(
        '--polygons', d / 'rts_2019.gpkg', d / 'run2020', '--min-overlap', 0, '--out', out
    )
    assert not out.exists()
    # a year without polygons: a warning, and every slump gone, then new again
    write(d / 'none_2020.gpkg', [], 'EPSG:32608')
    r = rts_seg('track', '--polygons', d / 'rts_2019.gpkg', d / 'none_2020.gpkg', d / 'rts_2021.geojson', '--out', out)
    assert r.returncode == 0, r.stderr
    assert 'rts-seg: warning:' in r.stderr and 'none_2020.gpkg (2020) holds no polygon' in r.stderr
    s, _ = read(out, 'slumps')
    assert s[s.year == 2020].status.tolist() == ['gone'] * 7 and s[s.year == 2021].status.tolist() == ['new'] * 5


@pytest.mark.skipif(not (DATA / 'experts').is_dir(), reason=f'intercomparison experts not found at {DATA}')
def test_track_experts_as_years(tmp_path):
    "Three experts' Peel polygons as three 'years': real shapes, and what must hold whatever they are."
    shps = [DATA / 'experts' / e / 'Peel_digitized.shp' for e in ('01', '02', '03')]
    out = tmp_path / 'peel.gpkg'
    r = rts_seg('track', '--polygons', *shps, '--years', 2019, 2020, 2021, '--out', out)
    assert r.returncode == 0, r.stderr
    s, meta = read(out, 'slumps')
    assert meta['crs'] == 'EPSG:32608'
    assert set(s.status) <= STATUSES and s.slump_id.notna().all() and (s.slump_id > 0).all()
    assert not s.duplicated(['slump_id', 'year']).any()
    for y, shp in zip([2019, 2020, 2021], shps):
        _, _, wkb, _ = pyogrio.raw.read(shp)
        src = shapely.from_wkb(wkb)
        here = s[(s.year == y) & (s.status != 'gone')]
        assert len(here) == len(src)  # nothing lost, nothing invented
        assert here.area_m2.sum() == pytest.approx(shapely.area(src).sum(), rel=1e-9)  # same CRS: the same areas
        assert here.geometry.notna().all() and s[(s.year == y) & (s.status == 'gone')].geometry.isna().all()
    assert (s[s.year == 2019].status == 'new').all()
    lin, _ = read(out, 'lineage')
    assert sorted(lin.slump_id) == sorted(set(s.slump_id))
    for y in (2020, 2021):  # every slump of the year before continues, ends in a merger, or is gone
        before = set(s[(s.year == y - 1) & (s.status != 'gone')].slump_id)
        now = s[s.year == y]
        linked = {int(i) for p in now.prev_ids for i in str(p).split(';') if i}
        assert before == linked
        ok = now.d_area_pct_yr.notna()
        assert np.allclose(now.d_area_m2, now.area_m2 - now.prev_area_m2, equal_nan=True)
        kept = now[ok & now.status.isin(['growing', 'stable', 'shrinking'])]
        assert ((kept.status == 'stable') == (kept.d_area_pct_yr.abs() < 10)).all()
        grown = now[now.status.isin(['growing', 'stable', 'shrinking', 'merged', 'split'])]
        assert (grown.retreat_max_m >= 0).all() and (grown.retreat_max_m < 1000).all()
    assert {'growing', 'shrinking', 'gone'} <= set(s.status)  # experts disagree: real shapes exercise the cases


def test_track_predict_run(tiny, tmp_path):
    """A tile-list run of `rts-seg predict` (a region of two tiles) as 2020, read from its output folder as predict leaves
    it (mosaic/peel.gpkg, not its .parquet copy nor tiles/), and its first tile's GeoPackage as 2021: the slumps of the
    first tile stable, those of the second gone."""
    from rasterio.transform import from_origin
    import rasterio

    src = sorted((tiny['data'] / 'PLANET-RGB').glob('*.tif'))[:2]
    (tmp_path / 'img' / 'PLANET-RGB').mkdir(parents=True)
    for k, s in enumerate(src):  # two tiles side by side, 3 m pixels, in UTM 8N
        with rasterio.open(s) as a:
            img, prof = a.read(), a.profile
        prof.update(crs='EPSG:32608', transform=from_origin(500_000 + 192 * k, 7_600_000, 3, 3))
        with rasterio.open(tmp_path / 'img' / 'PLANET-RGB' / f't{k}.tif', 'w', **prof) as o:
            o.write(img)
    pd.DataFrame(dict(tile_id=['t0', 't1'], RegionName='peel')).to_csv(tmp_path / 'tiles.csv', index=False)
    run = tmp_path / 'run2020'
    r = rts_seg(
        'predict', '--model', tiny['run'] / 'best.pth', '--tile-list', tmp_path / 'tiles.csv',
        '--imagery', tmp_path / 'img', '--out', run, '--tile-size', 64,
        'inference.min_area_m2=0', 'inference.simplify_m=0',
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / 'mosaic' / 'peel.parquet').exists() and (run / 'tiles' / 't0.gpkg').exists()
    r = rts_seg(
        'track', '--polygons', run, run / 'tiles' / 't0.gpkg', '--years', 2020, 2021, '--out', tmp_path / 'l.gpkg'
    )
    assert r.returncode == 0, r.stderr
    s, meta = read(tmp_path / 'l.gpkg', 'slumps')
    assert meta['crs'] == 'EPSG:32608'
    for year, f in ((2020, run / 'mosaic' / 'peel.gpkg'), (2021, run / 'tiles' / 't0.gpkg')):
        _, _, wkb, _ = pyogrio.raw.read(f)
        here = s[(s.year == year) & (s.status != 'gone')]
        assert len(here) == len(wkb) and set(here.source) <= {f.name}  # read once
        assert here.area_m2.sum() == pytest.approx(shapely.area(shapely.from_wkb(wkb)).sum(), rel=1e-9)
    y20 = s[s.year == 2020]
    assert len(y20) > 0, 'the tiny model found no slump: nothing tracked'
    t0 = shapely.box(500_000 + 1, 7_600_000 - 191, 500_000 + 190, 7_600_000 - 1)  # the tiles, less their edges
    t1 = shapely.box(500_192 + 1, 7_600_000 - 191, 500_192 + 190, 7_600_000 - 1)
    for r20 in y20.itertuples():  # each slump of 2020 wholly in one tile: stable in the first, gone in the second
        now = s[(s.year == 2021) & (s.slump_id == r20.slump_id)]
        if t0.contains(r20.geometry):
            assert now.status.tolist() == ['stable'] and now.d_area_m2.item() == pytest.approx(0, abs=1e-6)
        if t1.contains(r20.geometry):
            assert now.status.tolist() == ['gone']
    assert {'stable', 'gone'} <= set(s[s.year == 2021].status), s[['slump_id', 'year', 'status']]
