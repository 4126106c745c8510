package csidriver

import "fmt"

// event records an event on the publication's pod. Messages name the
// class, the object and the reason; they never hold a value, since only
// names and errors (which never carry values) go into them.
func (d *Driver) event(p *publication, eventType, reason, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if p.serviceAccount != "" {
		msg += " (pod service account " + p.serviceAccount + ")"
	}
	if d.cfg.Recorder == nil {
		d.cfg.Log.Info("event", "type", eventType, "reason", reason, "pod", p.podNS+"/"+p.podName, "message", msg)
		return
	}
	d.cfg.Recorder.Event(p.pod(), eventType, reason, msg)
}
