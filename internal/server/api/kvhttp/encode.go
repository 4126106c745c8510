package kvhttp

import (
	"slices"
	"strconv"

	"github.com/cofferhq/coffer/internal/protocol/jsonenc"
)

// AppendJSON writes the secret bundle as json.Marshal would (the fields in
// declaration order, omitempty honoured, tags sorted): a secret read is
// the vault's hottest response, and reflection was the largest cost left
// in its handler. TestSecretOutAppendJSON holds it to json.Marshal.
func (o secretOut) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	if o.Value != nil {
		b = jsonenc.AppendString(append(b, `"value":`...), *o.Value)
		b = append(b, ',')
	}
	b = jsonenc.AppendString(append(b, `"id":`...), o.ID)
	if o.ContentType != "" {
		b = jsonenc.AppendString(append(b, `,"contentType":`...), o.ContentType)
	}
	b = o.Attributes.appendJSON(append(b, `,"attributes":`...))
	if len(o.Tags) > 0 {
		b = appendTags(append(b, `,"tags":`...), o.Tags)
	}
	if o.KID != "" {
		b = jsonenc.AppendString(append(b, `,"kid":`...), o.KID)
	}
	if o.Managed {
		b = append(b, `,"managed":true`...)
	}
	if o.PreviousVersion != "" {
		b = jsonenc.AppendString(append(b, `,"previousVersion":`...), o.PreviousVersion)
	}
	if o.RecoveryID != "" {
		b = jsonenc.AppendString(append(b, `,"recoveryId":`...), o.RecoveryID)
	}
	if o.DeletedDate != 0 {
		b = strconv.AppendInt(append(b, `,"deletedDate":`...), o.DeletedDate, 10)
	}
	if o.ScheduledPurgeDate != 0 {
		b = strconv.AppendInt(append(b, `,"scheduledPurgeDate":`...), o.ScheduledPurgeDate, 10)
	}
	return append(b, '}')
}

func (a attributesOut) appendJSON(b []byte) []byte {
	b = strconv.AppendBool(append(b, `{"enabled":`...), a.Enabled)
	if a.NotBefore != nil {
		b = strconv.AppendInt(append(b, `,"nbf":`...), *a.NotBefore, 10)
	}
	if a.Expires != nil {
		b = strconv.AppendInt(append(b, `,"exp":`...), *a.Expires, 10)
	}
	b = strconv.AppendInt(append(b, `,"created":`...), a.Created, 10)
	b = strconv.AppendInt(append(b, `,"updated":`...), a.Updated, 10)
	b = jsonenc.AppendString(append(b, `,"recoveryLevel":`...), a.RecoveryLevel)
	b = strconv.AppendInt(append(b, `,"recoverableDays":`...), int64(a.RecoverableDays), 10)
	return append(b, '}')
}

// appendTags writes a tag map with its keys sorted, as encoding/json does.
func appendTags(b []byte, tags map[string]string) []byte {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonenc.AppendString(b, k)
		b = jsonenc.AppendString(append(b, ':'), tags[k])
	}
	return append(b, '}')
}
