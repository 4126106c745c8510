package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// The charts' size: legible beside a table on a docs page.
const (
	chartW = 16 * vg.Centimeter
	chartH = 9 * vg.Centimeter
)

var (
	cofferColor  = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	ceilingColor = color.RGBA{R: 0xaa, G: 0xaa, B: 0xaa, A: 0xff}
)

// sans is the charts' typeface, which gonum/plot ships (nothing is loaded
// from the system).
var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

func newPlot(title, ylabel string) *plot.Plot {
	plot.DefaultFont = sans
	plotter.DefaultFont = sans
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	return p
}

func svg(p *plot.Plot, name string) (Chart, error) {
	wt, err := p.WriterTo(chartW, chartH, "svg")
	if err != nil {
		return Chart{}, fmt.Errorf("chart %s: %w", name, err)
	}
	var b bytes.Buffer
	if _, err := wt.WriteTo(&b); err != nil {
		return Chart{}, fmt.Errorf("chart %s: %w", name, err)
	}
	return Chart{Name: name, SVG: b.Bytes()}, nil
}

// throughputChart compares the server's GET throughput with the bare
// handler's.
func throughputChart(g *GetResults) (Chart, error) {
	p := newPlot("GET of one secret: throughput", "requests per second")
	p.Y.Min, p.Y.Max = 0, 1.15*max(g.Server.PerSec, g.Ceiling.PerSec)
	bars, err := plotter.NewBarChart(plotter.Values{g.Server.PerSec, g.Ceiling.PerSec}, vg.Centimeter*2)
	if err != nil {
		return Chart{}, err
	}
	bars.Color = cofferColor
	bars.LineStyle.Width = 0
	p.Add(bars)
	p.NominalX("Coffer", "bare handler (the limit)")
	p.X.Min, p.X.Max = -0.6, 1.6
	return svg(p, "get-throughput.svg")
}

// latencyChart sets the server's latency percentiles beside the bare
// handler's.
func latencyChart(g *GetResults) (Chart, error) {
	p := newPlot("GET of one secret: latency", "milliseconds")
	ms := func(r BenchResult) plotter.Values {
		return plotter.Values{float64(r.P50Ns) / 1e6, float64(r.P90Ns) / 1e6, float64(r.P99Ns) / 1e6}
	}
	w := vg.Centimeter * 1.2
	server, err := plotter.NewBarChart(ms(g.Server), w)
	if err != nil {
		return Chart{}, err
	}
	server.Color, server.LineStyle.Width, server.Offset = cofferColor, 0, -w/2
	ceiling, err := plotter.NewBarChart(ms(g.Ceiling), w)
	if err != nil {
		return Chart{}, err
	}
	ceiling.Color, ceiling.LineStyle.Width, ceiling.Offset = ceilingColor, 0, w/2
	p.Add(server, ceiling)
	p.Legend.Add("Coffer", server)
	p.Legend.Add("bare handler", ceiling)
	// Room above the bars for the legend.
	p.Y.Min, p.Y.Max = 0, 1.35*float64(max(g.Server.P99Ns, g.Ceiling.P99Ns))/1e6
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Centimeter
	p.NominalX("p50", "p90", "p99")
	p.X.Min, p.X.Max = -0.7, 2.7
	return svg(p, "get-latency.svg")
}

// curve is one measured series against the number of versions.
type curve struct {
	name string
	y    func(ScalePoint) float64
}

// scaleChart draws curves against the number of versions, both axes
// logarithmic unless linearY.
func scaleChart(s *ScaleResults, name, title, ylabel string, linearY bool, curves ...curve) (Chart, error) {
	p := newPlot(title, ylabel)
	p.X.Label.Text = "secret versions in the store"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = powersOfTen{}
	lo, hi := math.Inf(1), 0.0
	var args []any
	for _, c := range curves {
		if !slices.ContainsFunc(s.Points, func(p ScalePoint) bool { return c.y(p) != 0 }) {
			continue // not measured on this engine
		}
		pts := make(plotter.XYs, 0, len(s.Points))
		for _, pt := range s.Points {
			if v := c.y(pt); v > 0 || linearY {
				pts = append(pts, plotter.XY{X: float64(pt.Versions), Y: v})
				lo, hi = min(lo, v), max(hi, v)
			}
		}
		args = append(args, c.name, pts)
	}
	// The legend sits in the top left, above the curves: the axis leaves
	// it room.
	if linearY {
		p.Y.Min, p.Y.Max = 0, max(hi*1.6, 1)
	} else {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Min, p.Y.Max = lo/2, hi*float64(len(curves))*6
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Centimeter / 2
	p.Add(plotter.NewGrid())
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return Chart{}, fmt.Errorf("chart %s: %w", name, err)
	}
	if len(s.Points) == 1 { // a log axis needs a range
		v := float64(s.Points[0].Versions)
		p.X.Min, p.X.Max = v/10, v*10
	}
	return svg(p, name)
}

func scaleLatencyChart(s *ScaleResults, prefix string) (Chart, error) {
	curves := []curve{
		{"random GET p50", func(p ScalePoint) float64 { return p.GetP50Ms }},
		{"random GET p99", func(p ScalePoint) float64 { return p.GetP99Ms }},
		{"hot GET p50", func(p ScalePoint) float64 { return p.HotP50Ms }},
		{"hot GET p99", func(p ScalePoint) float64 { return p.HotP99Ms }},
		{"list page", func(p ScalePoint) float64 { return p.ListPageMs }},
	}
	if s.BigVersions > 0 {
		curves = append(curves,
			curve{fmt.Sprintf("backup (%d versions)", s.BigVersions), func(p ScalePoint) float64 { return p.BackupMs }},
			curve{fmt.Sprintf("restore (%d versions)", s.BigVersions), func(p ScalePoint) float64 { return p.RestoreMs }})
	}
	return scaleChart(s, prefix+"latency.svg", "Cost per request as the data grows", "milliseconds", false, curves...)
}

func scaleStartChart(s *ScaleResults, prefix string) (Chart, error) {
	return scaleChart(s, prefix+"start.svg", "Server start to ready as the data grows", "milliseconds", true,
		curve{"start to ready", func(p ScalePoint) float64 { return p.StartMs }})
}

func scaleMemoryChart(s *ScaleResults, prefix string) (Chart, error) {
	return scaleChart(s, prefix+"memory.svg", "Server memory as the data grows", "MiB", true,
		curve{"RSS when ready", func(p ScalePoint) float64 { return p.RSSReadyMiB }},
		curve{"RSS after load, anonymous", func(p ScalePoint) float64 { return p.RSSAnonMiB }},
		curve{"RSS after load, peak", func(p ScalePoint) float64 { return p.RSSPeakMiB }},
		curve{"of which the store file mapped", func(p ScalePoint) float64 { return p.RSSStoreMiB }})
}

// powersOfTen marks an axis at each power of ten, labelled in full with
// thousands separators (1,000, 10,000, ...).
type powersOfTen struct{}

// Ticks implements plot.Ticker.
func (powersOfTen) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		v := math.Pow(10, e)
		if v >= lo && v <= hi {
			ticks = append(ticks, plot.Tick{Value: v, Label: num(v)})
		}
	}
	return ticks
}
