"""The invalid-rows file end to end: a CSV posted over HTTP, its bad rows kept by real workers through Kafka,
downloaded, corrected and posted again as it is: clean, with every cell as first uploaded."""

from __future__ import annotations

import csv
import io

import pytest

pytestmark = pytest.mark.slow


def test_a_csv_batchs_bad_rows_download_and_upload_again_clean(stack, api, tag):
    # Given a CSV batch with a bad age (and a phone number a spreadsheet would take for a formula) and a
    # ragged row
    body = (
        "name.firstName,name.lastName,age,phoneNumber\r\n"
        f"Ann,Lee{tag},30,+1 415 555 0101\r\n"
        f"Bob,Ray{tag},abc,+1 415 555 0102\r\n"
        f"Cid,Moe{tag},41\r\n"
    )
    response = api.post("/api/users", content=body.encode(), headers={"content-type": "text/csv"})
    assert response.status_code == 202, response.text
    batch_id = response.json()["batch_id"]
    assert stack.batch(api, batch_id)["counts"]["invalid"] == 2
    # When its invalid rows are downloaded
    download = api.get(f"/api/batches/{batch_id}/invalid.csv")
    # Then they come in the uploader's columns, with row and errors, the formula-like cell defused
    assert download.status_code == 200, download.text
    rows = list(csv.reader(io.StringIO(download.text, newline="")))
    assert rows[0] == ["_row", "_errors", "name.firstName", "name.lastName", "age", "phoneNumber"]
    assert rows[1] == ["2", "age: must be an integer", "Bob", f"Ray{tag}", "abc", "'+1 415 555 0102"]
    assert rows[2][0] == "3" and rows[2][2:] == ["Cid", f"Moe{tag}", "41"]
    # When the age is fixed and the ragged row completed, and the file posted again as it is
    rows[1][4] = "31"
    rows[2].append("+1 415 555 0103")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    again = api.post("/api/users", content=buffer.getvalue().encode(), headers={"content-type": "text/csv"})
    assert again.status_code == 202, again.text
    # Then both are stored, the phone numbers as they were first written (then normalised by validation)
    counts = stack.batch(api, again.json()["batch_id"])["counts"]
    assert (counts["stored"], counts["invalid"]) == (2, 0)
    stored = stack.sql(
        "SELECT name, age, phone_number FROM users WHERE name IN (%s, %s) ORDER BY name",
        f"Bob Ray{tag}",
        f"Cid Moe{tag}",
    )
    assert stored == [(f"Bob Ray{tag}", 31, "+14155550102"), (f"Cid Moe{tag}", 41, "+14155550103")]
    # and the kept records of the first batch are in the database, the second batch has none
    assert stack.sql("SELECT row FROM invalid_records WHERE batch_id = %s ORDER BY row", batch_id) == [
        (2,),
        (3,),
    ]
    assert api.get(f"/api/batches/{again.json()['batch_id']}/invalid.csv").text == "_row,_errors\r\n"
