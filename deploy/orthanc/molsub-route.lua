-- molsub-node auto-routing for Orthanc, per instance (docs/orthanc.md).
--
-- Every MG image (Modality MG, or SOP class MG For Presentation / For Processing) and every
-- lesion SEG is sent to the DICOM modality "molsub" as it arrives. The node groups a SEG with
-- the images it references whatever the order and the number of associations, so sending one
-- instance at a time is enough.
--
-- Never routed: the node's own results (SR, Secondary Capture, heatmap SEG), known by either
--   * the calling AE title of the association that stored them being the node's (MOLSUB_AET), or
--   * one of the node's SOP classes with Manufacturer, or a Contributing Equipment
--     Manufacturer, equal to the node's (common/inputs.py, NODE_MANUFACTURER), or
--   * a FRACTIONAL SEG (a map, never a lesion outline: the node would refuse it).
-- The node would ignore them anyway ([inputs] own_results = "ignore"), but sending them costs an
-- association per object and a log line each.
--
-- Sends are asynchronous Orthanc jobs (POST /modalities/molsub/store, "Synchronous": false):
-- the Lua thread is never blocked by the network; a failed job shows in /jobs and the Orthanc
-- log, and can be resubmitted (POST /jobs/ID/resubmit).

MOLSUB_MODALITY = 'molsub'              -- the DicomModalities entry of the node
MOLSUB_AET = 'MOLSUB'                   -- [node] ae_title in the node's node.toml
MOLSUB_MANUFACTURER = 'molsub-node open-source project'

MG_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.1.2'] = true,    -- Digital Mammography X-Ray, For Presentation
  ['1.2.840.10008.5.1.4.1.1.1.2.1'] = true,  -- Digital Mammography X-Ray, For Processing
}
SEG_CLASS = '1.2.840.10008.5.1.4.1.1.66.4'
NODE_CLASSES = {                              -- the SOP classes the node writes
  ['1.2.840.10008.5.1.4.1.1.88.34'] = true,  -- Comprehensive 3D SR
  ['1.2.840.10008.5.1.4.1.1.7'] = true,      -- Secondary Capture
  [SEG_CLASS] = true,                         -- heatmap SEG
}

local function Trim(s)
  return (tostring(s or ''):gsub('^%s+', ''):gsub('%s+$', ''))
end

-- Whether an instance's tags and origin say it is one of the node's results.
function MolsubIsOwnResult(tags, origin)
  if origin ~= nil and Trim(origin['RemoteAet']) == MOLSUB_AET then
    return true
  end
  if not NODE_CLASSES[Trim(tags['SOPClassUID'])] then
    return false
  end
  if Trim(tags['Manufacturer']) == MOLSUB_MANUFACTURER then
    return true
  end
  local equipment = tags['ContributingEquipmentSequence']
  if type(equipment) == 'table' then
    for _, item in pairs(equipment) do
      if type(item) == 'table' and Trim(item['Manufacturer']) == MOLSUB_MANUFACTURER then
        return true
      end
    end
  end
  return false
end

-- Whether an instance is an input of the node: an MG image, or a SEG that can outline lesions.
function MolsubIsInput(tags, origin)
  if MolsubIsOwnResult(tags, origin) then
    return false
  end
  local class = Trim(tags['SOPClassUID'])
  if MG_CLASSES[class] then
    return true
  end
  if class == SEG_CLASS then
    return string.upper(Trim(tags['SegmentationType'])) ~= 'FRACTIONAL'
  end
  -- Modality MG under another SOP class (tomosynthesis, vendor-wrapped Secondary Captures) is
  -- refused by the node's default [inputs]; route it only where the node is set to take it.
  return false
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  if not MolsubIsInput(tags, origin) then
    return
  end
  -- No print(): Lua's output is a warning line in Orthanc's log; the job is in /jobs.
  RestApiPost('/modalities/' .. MOLSUB_MODALITY .. '/store',
    DumpJson({ Resources = { instanceId }, Synchronous = false }, true))
end
